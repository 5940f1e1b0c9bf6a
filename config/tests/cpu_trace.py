"""Where a request's CPU goes, function by function (make bench only: bench_serving's
BENCH_SERVING_CPU_TRACE=1).

py-spy samples stacks (`--gil`: whichever thread holds the GIL), so a thread waiting on
PostgreSQL or Redis shows up in the functions that wait, and at one client the waits are most
of the samples. Here each function on the list is wrapped to add up the CPU its calling thread
spent inside it (time.thread_time_ns, inclusive of what it calls): a wait costs nothing. Only
requests whose method and path match are counted (their sync work runs on the request's thread,
config/asgi.py); the event loop's thread is measured whole (its CPU clock), as is the process.
Each function's wall time is added up too: wall less CPU is what the thread spent waiting inside
it (on PostgreSQL, Redis, the event loop, the GIL). Each worker writes its figures to
DIRECTORY/cpu-trace-<pid>.json every DUMP_EVERY counted requests; `read` adds the workers' files
up. The wrappers cost about a microsecond a call."""

from __future__ import annotations

import functools
import glob
import importlib
import inspect
import json
import os
import re
import sys
import threading
import time

# The metered send's path, outermost first ("module:qualified name"; a function imported by name
# elsewhere is replaced there too).
HOT_PATH = [
    "config.asgi:OneHopASGIHandler._response_in_thread",
    "django.core.handlers.base:BaseHandler.get_response",
    "rest_framework.views:APIView.dispatch",
    "rest_framework.views:APIView.initial",
    "rest_framework.views:APIView.perform_authentication",
    "rest_framework.views:APIView.check_throttles",
    "rest_framework.views:APIView.perform_content_negotiation",
    "chat.api:MessageListApi.post",
    "config.api.inputs:validated_body",
    "config.api.outputs:Representation.__call__",
    "chat.services:message_send",
    "chat.services:message_prepare",
    "chat.services:_send_target",
    "billing.services:entitlement_check",
    "chat.services:_messages_store",
    "chat.services:_reply_finish",
    "chat.services:_meter",
    "analytics.services:usage_record_alongside",
    "analytics.counters:increments_send",
    "asgiref.sync:AsyncToSync.__call__",
    "config.db.backend.base:DatabaseWrapper._pipelined",
    "config.db.rows:insert_rows",
    "config.db.rows:model_from_row",
    "django.db.models.base:Model.__init__",
    "django.db.backends.base.base:BaseDatabaseWrapper.connect",
    "django.db.backends.base.base:BaseDatabaseWrapper.set_autocommit",
    "django.db.transaction:Atomic.__enter__",
    "django.db.transaction:Atomic.__exit__",
    "redis.client:Redis.execute_command",
    "redis.client:Pipeline.execute",
    "django.http.response:HttpResponseBase.close",
]
ROOT = HOT_PATH[0]  # where a request's counting starts and ends
DUMP_EVERY = 200

_local = threading.local()
_lock = threading.Lock()
_dump_lock = threading.Lock()
_dumped = [0]  # the request count of the last file written
_stats: dict[str, list[int]] = {}  # name -> [calls, thread CPU ns, wall ns]
_requests = [0]
_process_started = [0.0]
_loop_started = [0]


def _loop_thread_ns() -> int:
    """The CPU of the process's main thread (the server's event loop) so far."""
    return time.clock_gettime_ns(time.pthread_getcpuclockid(threading.main_thread().ident))


def _counting() -> bool:
    return getattr(_local, "on", False)


def wrap(name: str, function, *, root_match=None, directory: str | None = None):
    """`function`, adding its calls' thread CPU to `name` while the thread counts. With
    `root_match` (scope -> bool; the request's thread entry), it turns counting on for matching
    requests and writes the figures to `directory` every DUMP_EVERY of them."""

    @functools.wraps(function)
    def timed(*args, **kwargs):
        starts = root_match is not None and not _counting() and root_match(args[1])
        if starts:
            _local.on = True
            if not _requests[0]:
                _process_started[0] = time.process_time()
                _loop_started[0] = _loop_thread_ns()
        if not _counting():
            return function(*args, **kwargs)
        began, began_wall = time.thread_time_ns(), time.perf_counter_ns()
        try:
            return function(*args, **kwargs)
        finally:
            spent, spent_wall = time.thread_time_ns() - began, time.perf_counter_ns() - began_wall
            with _lock:  # requests run on several threads at once (32 clients)
                figures = _stats.setdefault(name, [0, 0, 0])
                figures[0] += 1
                figures[1] += spent
                figures[2] += spent_wall
                if starts:
                    _requests[0] += 1
                    due = directory and _requests[0] % DUMP_EVERY == 0
            if starts:
                _local.on = False
                if due:
                    dump(directory)

    return timed


def dump(directory: str) -> None:
    with _lock:  # a copy: other requests' threads go on adding
        figures = {
            "requests": _requests[0],
            "process_ns": int((time.process_time() - _process_started[0]) * 1e9),
            "loop_ns": _loop_thread_ns() - _loop_started[0],
            "functions": {name: list(values) for name, values in _stats.items()},
        }
    path = os.path.join(directory, f"cpu-trace-{os.getpid()}.json")
    with _dump_lock:  # one writer at a time; a later copy is never replaced by an earlier one
        if figures["requests"] < _dumped[0]:
            return
        _dumped[0] = figures["requests"]
        with open(path + ".tmp", "w") as out:
            json.dump(figures, out)
        os.replace(path + ".tmp", path)


NAME_PATTERN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def functions_named(text: str) -> list[str]:
    """The functions BENCH_SERVING_CPU_TRACE_FUNCTIONS names, comma-separated, each as
    "module:Class.method" or "module:function"; ValueError with a sentence for one that is not."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    malformed = [name for name in names if not NAME_PATTERN.fullmatch(name)]
    if malformed:
        raise ValueError(
            "BENCH_SERVING_CPU_TRACE_FUNCTIONS takes names such as 'django.urls.resolvers:URLResolver.resolve', "
            f"comma-separated; not: {', '.join(repr(name) for name in malformed)}."
        )
    return names


def install(directory: str, *, method: str, path_pattern: str, targets: list[str] = HOT_PATH) -> list[str]:
    """Wrap `targets`; the requests counted are those with this method and a path matching
    `path_pattern`. The names that could not be found, or are not plain functions (a property,
    wrapped, would stop answering), for the caller to say."""
    pattern = re.compile(path_pattern)

    def matches(scope) -> bool:
        return scope.get("method") == method and bool(pattern.fullmatch(scope.get("path", "")))

    missing = []
    for target in targets:
        module_name, qualified = target.split(":")
        *owner_path, attribute = qualified.split(".")
        try:
            owner = importlib.import_module(module_name)
            for part in owner_path:
                owner = getattr(owner, part)
            original = owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute)
        except (ImportError, AttributeError, KeyError):
            missing.append(target)
            continue
        if not inspect.isfunction(original):
            missing.append(f"{target} (not a function)")
            continue
        is_root = target == ROOT
        timed = wrap(target, original, root_match=matches if is_root else None, directory=directory if is_root else None)
        setattr(owner, attribute, timed)
        if not isinstance(owner, type):  # imported by name elsewhere: replaced there too
            for module in list(sys.modules.values()):
                names = getattr(module, "__dict__", None) or {}
                for name, value in list(names.items()):
                    if value is original:
                        names[name] = timed
    return missing


def read(directory: str) -> tuple[int, float, float, list[tuple[str, float, float, float]]]:
    """(requests counted, the workers' CPU ms a request, their event loops' CPU ms a request,
    [(function, thread CPU ms a request, calls a request, wall ms a request)] largest CPU first), over every worker's
    file. The workers' CPU is counted from their first counted request to their last file, other
    requests served meanwhile included."""
    requests, process_ns, loop_ns, functions = 0, 0, 0, {}
    for path in glob.glob(os.path.join(directory, "cpu-trace-*.json")):
        with open(path) as source:
            figures = json.load(source)
        requests += figures["requests"]
        process_ns += figures["process_ns"]
        loop_ns += figures["loop_ns"]
        for name, counted in figures["functions"].items():
            total = functions.setdefault(name, [0, 0, 0])
            for n, value in enumerate(counted):
                total[n] += value
    if not requests:
        return 0, 0.0, 0.0, []
    rows = [(name, ns / requests / 1e6, calls / requests, wall / requests / 1e6) for name, (calls, ns, wall) in functions.items()]
    return requests, process_ns / requests / 1e6, loop_ns / requests / 1e6, sorted(rows, key=lambda row: -row[1])
