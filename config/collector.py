"""Python's garbage collector, tuned for a web worker (config/asgi.py, config/wsgi.py).

Measured on the metered message path (docs/performance.md): with Python's defaults the cyclic
collector took 6% of the web workers' CPU, 3% tuned. A full collection walked every object the
app made at start (Django, the URLconf, the models, the SDKs), and with 16 requests in flight a
young generation of 700 objects was collected about every request, finding them mostly alive.
"""

import gc
import json
import os
import time

# Objects allocated before a young collection runs: most of a request's objects are garbage by
# then. Each young collection then takes a few milliseconds instead of a fraction of one.
YOUNG_THRESHOLD = 10_000


def garbage_collector_tune() -> None:
    """Once the app is loaded: what it made at start moves to the permanent generation (never
    walked again, never freed: a worker keeps it for its life anyway), and the young generation
    grows before it is collected."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    if directory := os.environ.get("GC_STATS_DIR"):  # make bench (config/tests/bench_serving.py) only
        _collector_time_record(directory)


def _collector_time_record(directory: str) -> None:
    """After every collection, directory/<pid>.json holds the CPU seconds the collector and the
    whole process have used so far."""
    path, started, spent = os.path.join(directory, f"{os.getpid()}.json"), [0.0], [0.0]

    def record(phase, info):
        if phase == "start":
            started[0] = time.thread_time()
            return
        spent[0] += time.thread_time() - started[0]
        with open(path + ".tmp", "w") as f:
            json.dump({"collector_s": spent[0], "process_s": time.process_time()}, f)
        os.replace(path + ".tmp", path)  # a reader never sees half a file

    gc.callbacks.append(record)
