"""Reconciliation with the provider's bill: local servers speaking OpenAI's and Anthropic's
organization usage reports (real sockets, paginated), the ledger written through usage_record,
and the stored report, exact in tokens and dollars."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from accounts.tests.factories import make_user
from analytics import services, tasks
from analytics.models import ReconciliationLine, ReconciliationReport
from analytics.tests.factories import make_member, usage_fields
from config.db import rls

pytestmark = pytest.mark.django_db(transaction=True)

DAY1, DAY2, DAY3, DAY4 = date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 22), date(2026, 11, 23)
ANTHROPIC_PRICES = {
    "input_price": Decimal("3"),
    "output_price": Decimal("15"),
    "cache_read_price": Decimal("0.3"),
    "cache_write_5m_price": Decimal("3.75"),
    "cache_write_1h_price": Decimal("6"),
}


class UsageReportServer(ThreadingHTTPServer):
    """Answers GET with the page named by the `page` query parameter (the first page without one)."""

    daemon_threads = True

    def __init__(self, pages: dict[str | None, dict]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.pages = pages
        self.received: list[tuple[str, dict, dict]] = []
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: UsageReportServer

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        self.server.received.append((parts.path, query, {k.lower(): v for k, v in self.headers.items()}))
        page = self.server.pages.get(query.get("page", [None])[0])
        body = json.dumps(page if page is not None else {"error": {"message": "unknown page"}}).encode()
        self.send_response(200 if page is not None else 400)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def report_server():
    servers = []

    def start(pages):
        server = UsageReportServer(pages)
        server.thread.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def _record(user, org, records):
    with transaction.atomic():
        rls.context_set(user_id=user.pk)
        services.usage_record_batch(records=[usage_fields(user, org, **r) for r in records])


def _anthropic_call(day: date, hour: int, **overrides) -> dict:
    # Half a day's usage: 2,500 uncached + 25,000 read + 2,000 written (5m) + 500 written (1h) input, 1,000 output.
    fields = {
        "provider": "anthropic",
        "model": "claude-x",
        "created_at": _at(day, hour),
        "input_tokens": 30_000,
        "cache_read_tokens": 25_000,
        "cache_write_5m_tokens": 2_000,
        "cache_write_1h_tokens": 500,
        "output_tokens": 1_000,
        "key_source": "managed",
        **ANTHROPIC_PRICES,
    }
    return {**fields, **overrides}


@pytest.fixture
def anthropic_ledger():
    user, org = make_member()
    calls = [_anthropic_call(day, hour) for day in (DAY1, DAY2) for hour in (9, 17)]
    calls[1]["key_source"] = "free_tier"
    others = [
        _anthropic_call(DAY1, 10, key_source="user"),  # the user's own key: not on the platform's bill
        _anthropic_call(DAY1, 11, cache_hit=True, cost=Decimal(0)),  # answered from Confab's cache
        _anthropic_call(DAY2, 11, provider="openai"),  # another provider
    ]
    _record(user, org, calls + others)
    return user, org


def _anthropic_bucket(day: date, cache_read: int = 50_000, model: str = "claude-x") -> dict:
    return {
        "starting_at": f"{day.isoformat()}T00:00:00Z",
        "ending_at": f"{(day + timedelta(days=1)).isoformat()}T00:00:00Z",
        "results": [
            {
                "uncached_input_tokens": 5_000,
                "cache_creation": {"ephemeral_1h_input_tokens": 1_000, "ephemeral_5m_input_tokens": 4_000},
                "cache_read_input_tokens": cache_read,
                "output_tokens": 2_000,
                "server_tool_use": {"web_search_requests": 0},
                "api_key_id": None,
                "workspace_id": None,
                "model": model,
                "service_tier": None,
                "context_window": None,
            }
        ],
    }


def _anthropic_pages(day2_cache_read: int = 50_000, extra: list | None = None) -> dict:
    return {
        None: {"data": [_anthropic_bucket(DAY1)], "has_more": True, "next_page": "page_Mg=="},
        "page_Mg==": {"data": [_anthropic_bucket(DAY2, day2_cache_read), *(extra or [])], "has_more": False, "next_page": None},
    }


def _only_report() -> tuple[ReconciliationReport, list[ReconciliationLine]]:
    with rls.privileged(reason="test: read the report"):
        report = ReconciliationReport.objects.get()
        return report, list(report.lines.order_by("day", "model", "token_class"))


def test_anthropic_report_matching_the_ledger_is_stored_as_matched(settings, report_server, anthropic_ledger, capsys):
    server = report_server(_anthropic_pages())
    settings.ANTHROPIC_ADMIN_KEY, settings.ANTHROPIC_ADMIN_BASE_URL = "sk-ant-admin-test", server.url
    call_command("usage_reconcile", "--provider", "anthropic", "--from", "2026-11-20", "--to", "2026-11-21")
    assert "matches the ledger" in capsys.readouterr().out
    # Both pages fetched, with the admin key, the version header and the documented parameters.
    assert [(path, query.get("page")) for path, query, _ in server.received] == [
        ("/v1/organizations/usage_report/messages", None),
        ("/v1/organizations/usage_report/messages", ["page_Mg=="]),
    ]
    for _, query, headers in server.received:
        assert (headers["x-api-key"], headers["anthropic-version"]) == ("sk-ant-admin-test", "2023-06-01")
        assert query["starting_at"] == ["2026-11-20T00:00:00Z"] and query["ending_at"] == ["2026-11-22T00:00:00Z"]
        assert (query["bucket_width"], query["group_by[]"]) == (["1d"], ["model"])
    report, lines = _only_report()
    assert report.within_tolerance and report.drift_cost == 0
    assert (report.days_missing_in_ledger, report.days_missing_at_provider) == ([], [])
    assert len(lines) == 10 and {line.status for line in lines} == {"matched"}
    day1 = {line.token_class: line for line in lines if line.day == DAY1}
    assert {name: line.ledger_tokens for name, line in day1.items()} == {
        "input_uncached": 5_000,
        "cache_read": 50_000,
        "cache_write_5m": 4_000,
        "cache_write_1h": 1_000,
        "output": 2_000,
    }
    # What the ledger charged per class: tokens x the rate on its rows.
    assert day1["cache_read"].ledger_cost == Decimal("0.0150000000") and day1["output"].ledger_cost == Decimal("0.0300000000")


def test_two_percent_more_cache_reads_at_anthropic_on_one_day_is_reported_exactly_and_fails(settings, report_server, anthropic_ledger):
    server = report_server(_anthropic_pages(day2_cache_read=51_000))
    settings.ANTHROPIC_ADMIN_KEY, settings.ANTHROPIC_ADMIN_BASE_URL = "sk-ant-admin-test", server.url
    with pytest.raises(
        CommandError, match=r"drifts beyond 0\.001 in 1 line\(s\); the largest: 2026-11-21 claude-x cache_read \+1000 tokens"
    ):
        call_command("usage_reconcile", "--provider", "anthropic", "--from", "2026-11-20", "--to", "2026-11-21")
    report, lines = _only_report()
    assert not report.within_tolerance
    [drift] = [line for line in lines if line.status != "matched"]
    assert (drift.day, drift.model, drift.token_class, drift.status) == (DAY2, "claude-x", "cache_read", "drift")
    assert (drift.ledger_tokens, drift.provider_tokens, drift.drift_tokens) == (50_000, 51_000, 1_000)
    assert (drift.rate, drift.drift_cost, drift.over_tolerance) == (Decimal("0.3"), Decimal("0.0003000000"), True)
    assert report.drift_cost == Decimal("0.0003000000")


def test_a_drift_within_the_tolerance_passes(settings, report_server, anthropic_ledger):
    server = report_server(_anthropic_pages(day2_cache_read=50_040))  # 0.08% more
    settings.ANTHROPIC_ADMIN_KEY, settings.ANTHROPIC_ADMIN_BASE_URL = "sk-ant-admin-test", server.url
    call_command("usage_reconcile", "--provider", "anthropic", "--from", "2026-11-20", "--to", "2026-11-21")
    report, lines = _only_report()
    assert report.within_tolerance and report.drift_cost == Decimal("0.0000120000")
    assert [(line.status, line.over_tolerance) for line in lines if line.drift_tokens] == [("drift", False)]


def test_days_missing_on_either_side_are_reported(settings, report_server, anthropic_ledger):
    user, org = anthropic_ledger
    _record(user, org, [_anthropic_call(DAY4, 8)])  # the ledger has DAY4; the provider does not
    pages = _anthropic_pages(extra=[_anthropic_bucket(DAY3), {"starting_at": "2026-11-23T00:00:00Z", "results": []}])
    server = report_server(pages)  # the provider has DAY3; the ledger does not
    settings.ANTHROPIC_ADMIN_KEY, settings.ANTHROPIC_ADMIN_BASE_URL = "sk-ant-admin-test", server.url
    with pytest.raises(CommandError, match="days missing in the ledger: 2026-11-22; days missing at the provider: 2026-11-23"):
        call_command("usage_reconcile", "--provider", "anthropic", "--from", "2026-11-20", "--to", "2026-11-23")
    report, lines = _only_report()
    assert (report.days_missing_in_ledger, report.days_missing_at_provider) == (["2026-11-22"], ["2026-11-23"])
    day3 = {line.token_class: line for line in lines if line.day == DAY3}
    assert {line.status for line in day3.values()} == {"missing_in_ledger"}
    # Priced at the newest rate the ledger used for that model and class.
    assert (day3["cache_read"].provider_tokens, day3["cache_read"].drift_cost) == (50_000, Decimal("0.0150000000"))
    day4 = {line.token_class: line for line in lines if line.day == DAY4}
    assert {line.status for line in day4.values()} == {"missing_at_provider"}
    assert (day4["output"].drift_tokens, day4["output"].drift_cost) == (-1_000, Decimal("-0.0150000000"))


def _openai_bucket(day: date, input_tokens: int = 20_000, cached: int = 8_000) -> dict:
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    return {
        "object": "bucket",
        "start_time": start,
        "end_time": start + 86_400,
        "results": [
            {
                "object": "organization.usage.completions.result",
                "input_tokens": input_tokens,
                "output_tokens": 1_000,
                "input_cached_tokens": cached,
                "input_audio_tokens": 0,
                "output_audio_tokens": 0,
                "num_model_requests": 2,
                "project_id": None,
                "user_id": None,
                "api_key_id": None,
                "model": "gpt-x",
                "batch": None,
            }
        ],
    }


@pytest.fixture
def openai_ledger():
    user, org = make_member()
    call = {
        "provider": "openai",
        "model": "gpt-x",
        "input_tokens": 10_000,
        "cache_read_tokens": 4_000,
        "output_tokens": 500,
        "reasoning_tokens": 200,
        "input_price": Decimal("2.5"),
        "cache_read_price": Decimal("1.25"),
        "output_price": Decimal("10"),
        "key_source": "managed",
    }
    _record(user, org, [{**call, "created_at": _at(day, hour)} for day in (DAY1, DAY2) for hour in (6, 18)])
    return user, org


def test_openai_report_over_two_pages_matches_and_its_parameters_and_key_are_sent(settings, report_server, openai_ledger):
    pages = {
        None: {"object": "page", "data": [_openai_bucket(DAY1)], "has_more": True, "next_page": "AAAAAGdGxdEiJdKOAAAAAGcqsYA="},
        "AAAAAGdGxdEiJdKOAAAAAGcqsYA=": {"object": "page", "data": [_openai_bucket(DAY2)], "has_more": False, "next_page": None},
    }
    server = report_server(pages)
    settings.OPENAI_ADMIN_KEY, settings.OPENAI_ADMIN_BASE_URL = "sk-admin-test", server.url
    call_command("usage_reconcile", "--provider", "openai", "--from", "2026-11-20", "--to", "2026-11-21")
    assert len(server.received) == 2
    for path, query, headers in server.received:
        assert path == "/v1/organization/usage/completions"
        assert headers["authorization"] == "Bearer sk-admin-test"
        assert query["start_time"] == [str(int(_at(DAY1, 0).timestamp()))] and query["end_time"] == [str(int(_at(DAY3, 0).timestamp()))]
        assert (query["bucket_width"], query["group_by"]) == (["1d"], ["model"])
    assert server.received[1][1]["page"] == ["AAAAAGdGxdEiJdKOAAAAAGcqsYA="]
    report, lines = _only_report()
    assert report.within_tolerance
    assert {(line.day, line.token_class): line.ledger_tokens for line in lines} == {
        (day, name): tokens
        for day in (DAY1, DAY2)
        for name, tokens in (("input_uncached", 12_000), ("cache_read", 8_000), ("output", 1_000))
    }


def test_the_file_path_reads_a_list_of_pages_or_one_page(settings, tmp_path, openai_ledger):
    settings.OPENAI_ADMIN_KEY = None  # --file needs no key and fetches nothing
    pages = tmp_path / "pages.json"
    pages.write_text(
        json.dumps(
            [{"data": [_openai_bucket(DAY1)], "has_more": True}, {"data": [_openai_bucket(DAY2, input_tokens=20_160, cached=8_160)]}]
        )
    )
    with pytest.raises(CommandError, match=r"2026-11-21 gpt-x cache_read \+160 tokens \(\$\+0\.0002000000\)"):
        call_command("usage_reconcile", "--provider", "openai", "--from", "2026-11-20", "--to", "2026-11-21", "--file", str(pages))
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"data": [_openai_bucket(DAY1)], "has_more": False}))
    call_command("usage_reconcile", "--provider", "openai", "--from", "2026-11-20", "--to", "2026-11-20", "--file", str(one))
    with rls.privileged(reason="test: read the reports"):
        reports = list(ReconciliationReport.objects.order_by("created_at"))
    assert [(r.within_tolerance, r.source) for r in reports] == [(False, f"file {pages}"), (True, f"file {one}")]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--provider", "gemini", "--from", "2026-11-20", "--to", "2026-11-21"], "Unknown provider 'gemini': use openai or anthropic."),
        (["--provider", "openai", "--from", "20/11/2026", "--to", "2026-11-21"], "--from must be a date as YYYY-MM-DD, not '20/11/2026'."),
        (["--provider", "openai", "--from", "2026-11-22", "--to", "2026-11-21"], "--from must be on or before --to."),
        (["--provider", "openai", "--from", "2026-11-20", "--to", "2026-11-21"], "OPENAI_ADMIN_KEY is not set: set it, or pass --file"),
        (["--provider", "openai", "--from", "2026-11-20", "--to", "2026-11-21", "--file", "/nonexistent.json"], "could not be read"),
    ],
)
def test_bad_arguments_exit_non_zero_with_a_sentence(settings, args, message):
    settings.OPENAI_ADMIN_KEY = None
    with pytest.raises(CommandError) as error:
        call_command("usage_reconcile", *args)
    assert message in str(error.value)
    with rls.privileged(reason="test: nothing stored"):
        assert ReconciliationReport.objects.count() == 0


def test_a_malformed_report_or_an_http_error_is_a_sentence_not_a_traceback(settings, tmp_path, report_server):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"start_time": 1763596800, "results": [{"input_tokens": -5, "model": "gpt-x"}]}]}))
    with pytest.raises(CommandError, match="impossible token count"):
        call_command("usage_reconcile", "--provider", "openai", "--from", "2026-11-20", "--to", "2026-11-20", "--file", str(bad))
    bad.write_text("[" * 100_000 + "]" * 100_000)  # deeper than the JSON reader goes
    with pytest.raises(CommandError, match="nests deeper than a usage report"):
        call_command("usage_reconcile", "--provider", "openai", "--from", "2026-11-20", "--to", "2026-11-20", "--file", str(bad))
    server = report_server({})  # every page is unknown: HTTP 400
    settings.ANTHROPIC_ADMIN_KEY, settings.ANTHROPIC_ADMIN_BASE_URL = "sk-ant-admin-test", server.url
    with pytest.raises(CommandError, match="answered HTTP 400"):
        call_command("usage_reconcile", "--provider", "anthropic", "--from", "2026-11-20", "--to", "2026-11-20")


def test_reports_are_staff_only_the_app_role_can_neither_read_nor_write_them(settings, tmp_path, openai_ledger, raw_app_connection):
    user, _ = openai_ledger
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"data": [_openai_bucket(DAY1)]}))
    call_command("usage_reconcile", "--provider", "openai", "--from", "2026-11-20", "--to", "2026-11-20", "--file", str(one))
    for table in ("analytics_reconciliationreport", "analytics_reconciliationline"):
        with raw_app_connection.cursor() as cur:
            cur.execute("SELECT set_config('app.user_id', %s, true)", [str(user.pk)])
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                cur.execute(f"SELECT count(*) FROM {table}")
        raw_app_connection.rollback()
    with raw_app_connection.cursor() as cur, pytest.raises(psycopg.errors.InsufficientPrivilege):
        cur.execute("DELETE FROM analytics_reconciliationreport")
    raw_app_connection.rollback()


def test_the_daily_job_skips_quietly_without_an_admin_key(settings, caplog):
    settings.OPENAI_ADMIN_KEY = settings.ANTHROPIC_ADMIN_KEY = None
    with caplog.at_level("INFO", logger="confab.analytics.tasks"):
        assert tasks.usage_reconcile_task() == {}
    assert "usage reconciliation for openai skipped: OPENAI_ADMIN_KEY is not set" in caplog.text
    with rls.privileged(reason="test: nothing stored"):
        assert ReconciliationReport.objects.count() == 0


def test_the_daily_job_reconciles_yesterday_on_a_real_worker_when_the_key_is_set(settings, report_server, celery_worker):
    yesterday = timezone.now().astimezone(UTC).date() - timedelta(days=1)
    server = report_server({None: {"data": [_anthropic_bucket(yesterday)], "has_more": False}})
    settings.OPENAI_ADMIN_KEY = None
    settings.ANTHROPIC_ADMIN_KEY, settings.ANTHROPIC_ADMIN_BASE_URL = "sk-ant-admin-test", server.url
    result = tasks.usage_reconcile_task.delay().get(timeout=60)
    assert list(result) == ["anthropic"] and result["anthropic"]["within_tolerance"] is False  # the ledger has none of it
    assert server.received[0][1]["starting_at"] == [f"{yesterday.isoformat()}T00:00:00Z"]
    report, lines = _only_report()
    assert (report.date_from, report.date_to, report.days_missing_in_ledger) == (yesterday, yesterday, [yesterday.isoformat()])
    assert {line.status for line in lines} == {"missing_in_ledger"}


def test_staff_see_the_report_and_its_lines_read_only_in_admin(client, settings, report_server, anthropic_ledger):
    server = report_server(_anthropic_pages(day2_cache_read=51_000))
    settings.ANTHROPIC_ADMIN_KEY, settings.ANTHROPIC_ADMIN_BASE_URL = "sk-ant-admin-test", server.url
    with pytest.raises(CommandError):
        call_command("usage_reconcile", "--provider", "anthropic", "--from", "2026-11-20", "--to", "2026-11-21")
    report, _ = _only_report()
    member, _ = make_member()
    client.force_login(member)
    assert client.get(reverse("admin:analytics_reconciliationreport_changelist")).status_code == 302  # to the admin login
    client.force_login(make_user(role="staff", is_superuser=True))
    assert client.get(reverse("admin:analytics_reconciliationreport_changelist")).status_code == 200
    detail = client.get(reverse("admin:analytics_reconciliationreport_change", args=[report.pk])).content.decode()
    assert "0.0003000000" in detail and "51000" in detail and "Drift" in detail
    assert 'name="_save"' not in detail  # a view page, not a form
