"""The bench's CPU trace (config/tests/cpu_trace.py) counts CPU apart from waits (wall time is
counted as well), and only in the requests it was asked to count."""

import threading
import time

import pytest

from config.tests import cpu_trace


class Handler:
    def entry(self, scope):  # stands in for OneHopASGIHandler._response_in_thread(scope, ...)
        busy()
        idle()


def busy():
    deadline = time.thread_time() + 0.03
    while time.thread_time() < deadline:
        pass


def idle():
    time.sleep(0.05)


@pytest.fixture
def traced(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_trace, "_stats", {})
    monkeypatch.setattr(cpu_trace, "_requests", [0])
    monkeypatch.setattr(cpu_trace, "_dumped", [0])
    monkeypatch.setattr(cpu_trace, "ROOT", f"{__name__}:Handler.entry")
    monkeypatch.setattr(cpu_trace, "DUMP_EVERY", 1)
    for name in ("entry",):
        monkeypatch.setattr(Handler, name, Handler.__dict__[name])  # put back after the test
    monkeypatch.setattr(f"{__name__}.busy", busy)
    monkeypatch.setattr(f"{__name__}.idle", idle)
    missing = cpu_trace.install(
        str(tmp_path),
        method="POST",
        path_pattern=r"/api/v1/conversations/[^/]+/messages",
        targets=[f"{__name__}:Handler.entry", f"{__name__}:busy", f"{__name__}:idle", f"{__name__}:not_here"],
    )
    assert missing == [f"{__name__}:not_here"]
    return tmp_path


def test_a_counted_request_adds_the_cpu_of_each_function_and_nothing_for_a_wait(traced):
    Handler().entry({"method": "POST", "path": "/api/v1/conversations/abc/messages"})
    requests, process_ms, loop_ms, rows = cpu_trace.read(str(traced))
    figures = {name: ms for name, ms, _calls, _wall in rows}
    wall = {name: wall_ms for name, _ms, _calls, wall_ms in rows}
    assert requests == 1 and process_ms >= 25 and loop_ms >= 25  # this test's thread is the main one
    assert 25 <= figures[f"{__name__}:busy"] <= 60  # 30 ms of CPU burnt
    assert figures[f"{__name__}:idle"] < 5  # 50 ms asleep
    assert figures[f"{__name__}:Handler.entry"] >= figures[f"{__name__}:busy"]
    # The wall time has the sleep in it: 50 ms waiting inside `idle`, and the entry's wall is both.
    assert 50 <= wall[f"{__name__}:idle"] < 500
    assert wall[f"{__name__}:Handler.entry"] >= wall[f"{__name__}:idle"] + figures[f"{__name__}:busy"]


def test_other_requests_are_not_counted(traced):
    handler = Handler()
    handler.entry({"method": "GET", "path": "/api/v1/conversations/abc/messages"})
    handler.entry({"method": "POST", "path": "/api/v1/conversations/abc/messages/extra"})
    busy()  # outside any request
    assert cpu_trace.read(str(traced)) == (0, 0.0, 0.0, [])
    handler.entry({"method": "POST", "path": "/api/v1/conversations/abc/messages"})
    requests, _process_ms, _loop_ms, rows = cpu_trace.read(str(traced))
    assert requests == 1 and {name: calls for name, _ms, calls, _wall in rows}[f"{__name__}:busy"] == 1


def test_requests_on_several_threads_at_once_are_all_counted(traced, monkeypatch):
    monkeypatch.setattr(f"{__name__}.idle", lambda: None)  # the wrapped `busy` is what each request runs
    handler, scope = Handler(), {"method": "POST", "path": "/api/v1/conversations/abc/messages"}

    def requests():
        for _ in range(5):
            handler.entry(scope)

    threads = [threading.Thread(target=requests) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    requests_counted, _process_ms, _loop_ms, rows = cpu_trace.read(str(traced))
    assert requests_counted == 20
    assert {name: calls for name, _ms, calls, _wall in rows}[f"{__name__}:busy"] == 1


def test_more_functions_are_named_module_colon_qualified_name_or_refused_with_a_sentence():
    assert cpu_trace.functions_named(" django.urls.resolvers:URLResolver.resolve, ,json:dumps ") == [
        "django.urls.resolvers:URLResolver.resolve",
        "json:dumps",
    ]
    assert cpu_trace.functions_named("") == []
    with pytest.raises(ValueError, match=r"names such as .*not: 'django.urls.resolvers.URLResolver.resolve', 'a:b\\nc'"):
        cpu_trace.functions_named("django.urls.resolvers.URLResolver.resolve,a:b\nc")


class WithProperty:
    @property
    def value(self):
        return 1


def test_a_property_is_reported_not_wrapped(tmp_path):
    """Wrapped, a property would become a method, and every request reading it would fail."""
    missing = cpu_trace.install(
        str(tmp_path), method="POST", path_pattern="/x", targets=[f"{__name__}:WithProperty.value", "nowhere:thing"]
    )
    assert missing == [f"{__name__}:WithProperty.value (not a function)", "nowhere:thing"]
    assert WithProperty().value == 1
