"""The web worker's garbage collector (config/collector.py)."""

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
