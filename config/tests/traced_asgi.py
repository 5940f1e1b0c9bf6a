"""config/asgi.py's application with config/tests/cpu_trace.py's wrappers installed: bench_serving
serves it under BENCH_SERVING_CPU_TRACE=1 (CPU_TRACE_DIR, CPU_TRACE_METHOD, CPU_TRACE_PATH set).
BENCH_SERVING_CPU_TRACE_FUNCTIONS adds functions to cpu_trace.HOT_PATH, comma-separated, each as
"module:Class.method" (a middleware's own methods, say)."""

import os
import sys

from config.asgi import application  # noqa: F401 (served)
from config.tests import cpu_trace

extra = cpu_trace.functions_named(os.environ.get("BENCH_SERVING_CPU_TRACE_FUNCTIONS", ""))
missing = cpu_trace.install(
    os.environ["CPU_TRACE_DIR"],
    method=os.environ["CPU_TRACE_METHOD"],
    path_pattern=os.environ["CPU_TRACE_PATH"],
    targets=[*cpu_trace.HOT_PATH, *extra],
)
if missing:
    print("cpu_trace: not found, not traced: " + ", ".join(missing), file=sys.stderr)
