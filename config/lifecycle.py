"""The process is stopping: what a process keeps in memory for a while (the API log's batch,
analytics/buffer.py) is sent before it goes.

`process_stopping` is sent by the ASGI server's lifespan shutdown (config/asgi.py): uvicorn ends
a worker gracefully and then raises again the signal that stopped it, with its default action,
so the process dies without running atexit. Other processes (WSGI workers, commands, Celery)
send it at interpreter exit. Receivers may run twice and must not mind."""

import atexit

from django.dispatch import Signal

process_stopping = Signal()


def process_stop() -> None:
    process_stopping.send(sender=None)


atexit.register(process_stop)
