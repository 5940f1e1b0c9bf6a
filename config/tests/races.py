"""For tests that race two requests: PostgreSQL's own lock table says when one waits on another,
so a test orders them by that, never by sleeping for luck."""

import threading

import pytest
from django.db import connections

from config.db import rls


def waiting_locks() -> int:
    """How many lock requests are waiting, across the server."""
    with rls.privileged(reason="test: read the lock table"), connections[rls.PRIVILEGED_ALIAS].cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
        return cur.fetchone()[0]


def open_transactions() -> int:
    """How many client sessions of this database are inside a transaction, besides the caller's
    (each holds its virtual transaction id's lock while it is; a session with no user is a
    background process, autovacuum's; another role's backend_type is hidden from this one)."""
    with rls.privileged(reason="test: read the lock table"), connections[rls.PRIVILEGED_ALIAS].cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'virtualxid'"
            " AND a.usename IS NOT NULL AND a.datname = current_database() AND l.pid <> pg_backend_pid()"
        )
        return cur.fetchone()[0]


def until(predicate, what: str, tries: int = 3000) -> None:
    """Wait (up to 30 s) until predicate() holds, or fail saying what never happened."""
    for _ in range(tries):
        if predicate():
            return
        threading.Event().wait(0.01)
    pytest.fail(f"never happened: {what}")


def on_a_thread(target, errors: list) -> threading.Thread:
    """Start target() on a thread of its own (its own database connections, closed at its end);
    what it raises goes into `errors`, for the test to assert on."""

    def run():
        try:
            target()
        except Exception as exc:  # the test asserts on errors
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


class Paused(threading.Thread):
    """Runs fn() in its own thread (own connection); the result, or the exception, is kept in `result`."""

    def __init__(self, fn, name):
        super().__init__(name=name, daemon=True)
        self.fn, self.result = fn, None

    def run(self):
        try:
            self.result = self.fn()
        except Exception as exc:  # the outcome is the assertion
            self.result = exc
        finally:
            connections.close_all()


def hold_in_thread(monkeypatch, module, name: str, thread_name: str, *, after: bool = True):
    """Wrap module.name: in the thread called thread_name, pause (after the call, or before) until
    released. Returns the events (reached, release)."""
    original = getattr(module, name)
    reached, release = threading.Event(), threading.Event()

    def wrapper(*args, **kwargs):
        if threading.current_thread().name != thread_name:
            return original(*args, **kwargs)
        if not after:
            reached.set()
            assert release.wait(60), "never released"
            return original(*args, **kwargs)
        result = original(*args, **kwargs)
        reached.set()
        assert release.wait(60), "never released"
        return result

    monkeypatch.setattr(module, name, wrapper)
    return reached, release


def race_while_held(monkeypatch, owner, name: str, first, second, waits: str) -> dict:
    """`first` runs on a thread of its own until it has called owner.name (inside its transaction,
    holding what it locked so far); then `second` starts on another and must wait on a lock `first`
    holds (the lock table shows a waiter: `waits` says which); then `first` goes on. Their results
    (or errors, as repr), by name: "first", "second"."""
    held, go, outcome = threading.Event(), threading.Event(), {}
    real = getattr(owner, name)

    def holding(*args, **kwargs):
        result = real(*args, **kwargs)
        if threading.current_thread().name == "first" and not held.is_set():
            held.set()
            assert go.wait(30)
        return result

    monkeypatch.setattr(owner, name, holding)

    def run(which, call):
        try:
            outcome[which] = call()
        except Exception as exc:  # noqa: BLE001  surfaced by the caller's assertion
            outcome[which] = repr(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(which, call), name=which) for which, call in (("first", first), ("second", second))]
    threads[0].start()
    assert held.wait(30)
    threads[1].start()
    until(lambda: waiting_locks() >= 1, waits)
    go.set()
    for thread in threads:
        thread.join(30)
    return outcome
