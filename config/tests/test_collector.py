"""The web worker's garbage collector (config/collector.py)."""

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

from config.collector import YOUNG_THRESHOLD


@pytest.mark.parametrize("module", ["config.asgi", "config.wsgi"])
def test_a_web_worker_freezes_what_the_app_made_at_start_and_collects_the_young_less_often(module):
    probe = f"import gc, {module}; print(gc.get_freeze_count(), gc.get_threshold()[0])"
    out = subprocess.run([sys.executable, "-c", probe], cwd=settings.BASE_DIR, env=os.environ, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    frozen, young = map(int, out.stdout.split())
    assert frozen > 50_000, "the loaded app (Django, the URLconf, the models) is not in the permanent generation"
    assert young == YOUNG_THRESHOLD


def test_with_gc_stats_dir_a_worker_records_the_collectors_time_for_the_bench(tmp_path):
    """make bench reads these files (config/tests/bench_serving.py): the collector's share of a worker's CPU."""
    probe = "import gc, config.asgi; [gc.collect(0) for _ in range(3)]"
    env = {**os.environ, "GC_STATS_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    [written] = tmp_path.glob("*.json")
    figures = json.loads(written.read_text())
    assert 0 < figures["collector_s"] <= figures["process_s"]


def test_without_gc_stats_dir_nothing_is_recorded():
    probe = "import gc, config.asgi; print(sum('_collector_time_record' in cb.__qualname__ for cb in gc.callbacks))"
    env = {key: value for key, value in os.environ.items() if key != "GC_STATS_DIR"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0"]
