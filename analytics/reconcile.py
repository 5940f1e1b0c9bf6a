"""Reconciliation with the provider's bill: its organization usage report for the platform's keys,
per UTC day, model and token class, against the ledger's calls on those keys.

OpenAI's completions usage report counts input including cached tokens and has no cache-write
split, so for OpenAI three classes are compared (uncached input, cache read, output); the
ledger's cache writes, if any, count as uncached input there. Anthropic's messages usage report
has all five classes apart. Dollars are at the rates on the ledger rows; tokens only the provider
shows are priced at the newest rate the ledger used for that model and class in the range, and
left unpriced (tokens only) when the ledger never used one: analytics knows no catalog.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

import httpx2
from django.conf import settings

from analytics import selectors
from analytics.errors import ReconciliationFailed
from analytics.models import ReconciliationLine, ReconciliationReport
from config.db import rls
from config.text import text_clean

logger = logging.getLogger("confab.analytics.reconcile")

PROVIDERS = ("openai", "anthropic")
CLASSES = {
    "openai": ("input_uncached", "cache_read", "output"),
    "anthropic": ("input_uncached", "cache_read", "cache_write_5m", "cache_write_1h", "output"),
}
PER_MILLION = Decimal("1000000")
COST_PLACES = Decimal("0.0000000001")
MAX_DAYS = 366
MAX_PAGES = 1000  # a report that never stops paginating is refused, not followed forever
ANTHROPIC_VERSION = "2023-06-01"
TIMEOUT_SECONDS = 30.0
Status = ReconciliationLine.Status


@dataclass(frozen=True)
class ReconcileArguments:
    provider: str
    start: date
    end: date
    tolerance: Decimal


def reconcile_arguments(*, provider: str, start: str | date, end: str | date, tolerance=None) -> ReconcileArguments:
    """Checked arguments, or ReconciliationFailed with a sentence saying what is wrong."""
    if provider not in PROVIDERS:
        raise ReconciliationFailed(f"Unknown provider '{provider}': use openai or anthropic.", {"field": "provider"})
    days = []
    for name, value in (("from", start), ("to", end)):
        try:
            days.append(value if isinstance(value, date) else date.fromisoformat(str(value)))
        except ValueError:
            raise ReconciliationFailed(f"--{name} must be a date as YYYY-MM-DD, not '{value}'.", {"field": name}) from None
    start_day, end_day = days
    if start_day > end_day:
        raise ReconciliationFailed("--from must be on or before --to.", {"field": "from"})
    if end_day == date.max:  # the ledger query and the report's request both end at midnight after --to
        raise ReconciliationFailed(f"--to must be before {date.max}: the day after it does not exist.", {"field": "to"})
    if (end_day - start_day).days + 1 > MAX_DAYS:
        raise ReconciliationFailed(f"A reconciliation covers at most {MAX_DAYS} days.", {"field": "to"})
    raw = settings.USAGE_RECONCILE_TOLERANCE if tolerance is None else tolerance
    try:
        fraction = Decimal(str(raw))
    except InvalidOperation:
        fraction = Decimal(-1)
    if not fraction.is_finite() or not 0 <= fraction < 1:
        raise ReconciliationFailed(f"USAGE_RECONCILE_TOLERANCE must be a fraction from 0 to below 1, not '{raw}'.", {"field": "tolerance"})
    return ReconcileArguments(provider, start_day, end_day, fraction)


def admin_key(provider: str) -> str | None:
    return {"openai": settings.OPENAI_ADMIN_KEY, "anthropic": settings.ANTHROPIC_ADMIN_KEY}[provider] or None


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _request(provider: str, start: date, end: date) -> tuple[str, dict, dict]:
    """The report's URL, headers and first page's query for [start, end] (whole UTC days)."""
    key, since, until = admin_key(provider), _midnight(start), _midnight(end) + timedelta(days=1)
    if provider == "openai":
        url = settings.OPENAI_ADMIN_BASE_URL.rstrip("/") + "/v1/organization/usage/completions"
        params = {
            "start_time": int(since.timestamp()),
            "end_time": int(until.timestamp()),
            "bucket_width": "1d",
            "group_by": "model",
            "limit": 31,
        }
        return url, {"Authorization": f"Bearer {key}"}, params
    url = settings.ANTHROPIC_ADMIN_BASE_URL.rstrip("/") + "/v1/organizations/usage_report/messages"
    params = {
        "starting_at": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ending_at": until.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "bucket_width": "1d",
        "group_by[]": "model",
        "limit": 31,
    }
    return url, {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION}, params


def usage_report_fetch(*, provider: str, start: date, end: date) -> list[dict]:
    """Every page of the provider's organization usage report for the days, with its admin key."""
    if not admin_key(provider):
        name = f"{provider.upper()}_ADMIN_KEY"
        raise ReconciliationFailed(f"{name} is not set: set it, or pass --file with the report's JSON.", {"field": name})
    url, headers, params = _request(provider, start, end)
    pages = []
    with httpx2.Client(timeout=TIMEOUT_SECONDS, follow_redirects=False) as client:
        while True:
            try:
                response = client.get(url, headers=headers, params=params)
            except httpx2.HTTPError as exc:
                raise ReconciliationFailed(f"The {provider} usage report could not be fetched: {exc}.") from exc
            if response.status_code != 200:
                # Its words without the admin key, which a refusal may quote (a proxy's echo, an old API).
                said = response.text[:300].replace(admin_key(provider), "[admin key]")
                raise ReconciliationFailed(
                    f"The {provider} usage report answered HTTP {response.status_code}: {said}", {"status": response.status_code}
                )
            try:
                page = response.json()
            except (ValueError, RecursionError):
                raise ReconciliationFailed(
                    f"The {provider} usage report answered with something that is not JSON (or nests deeper than a usage report does)."
                ) from None
            pages.append(page)
            if not (isinstance(page, dict) and page.get("has_more") and page.get("next_page")):
                return pages
            if len(pages) >= MAX_PAGES:
                raise ReconciliationFailed(f"The {provider} usage report went on past {MAX_PAGES} pages; narrow the dates.")
            params = {**params, "page": page["next_page"]}


# A day's tokens for one model and class, and the report's sums of them, are stored as bigint:
# a count past this is no report of real usage, and summed it could not be stored.
TOKENS_MAX = 10**15
MODEL_NAME_MAX = ReconciliationLine._meta.get_field("model").max_length


def _count(value, where: str) -> int:
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value <= TOKENS_MAX:
        raise ReconciliationFailed(f"The usage report has an impossible token count at {where}: {str(value)[:40]}.")
    return value


def _bucket_day(provider: str, bucket: dict) -> date:
    try:
        if provider == "openai":
            return datetime.fromtimestamp(bucket["start_time"], tz=UTC).date()
        return datetime.fromisoformat(bucket["starting_at"].replace("Z", "+00:00")).astimezone(UTC).date()
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError):  # AttributeError: a number where text goes
        raise ReconciliationFailed("The usage report has a bucket without a readable start time.") from None


def _result_classes(provider: str, result: dict, where: str) -> dict[str, int]:
    if provider == "openai":
        total, cached = _count(result.get("input_tokens"), where), _count(result.get("input_cached_tokens"), where)
        if cached > total:
            raise ReconciliationFailed(f"The usage report has more cached than total input tokens at {where}.")
        return {"input_uncached": total - cached, "cache_read": cached, "output": _count(result.get("output_tokens"), where)}
    creation = result.get("cache_creation") or {}
    if not isinstance(creation, dict):
        raise ReconciliationFailed(f"The usage report's cache_creation at {where} is not an object.")
    return {
        "input_uncached": _count(result.get("uncached_input_tokens"), where),
        "cache_read": _count(result.get("cache_read_input_tokens"), where),
        "cache_write_5m": _count(creation.get("ephemeral_5m_input_tokens"), where),
        "cache_write_1h": _count(creation.get("ephemeral_1h_input_tokens"), where),
        "output": _count(result.get("output_tokens"), where),
    }


def usage_report_parse(*, provider: str, pages) -> dict[tuple[date, str], dict[str, int]]:
    """The report's tokens per (UTC day, model) and class; pages as fetched, or one page alone."""
    if isinstance(pages, dict):
        pages = [pages]
    if not isinstance(pages, list) or not all(isinstance(p, dict) and isinstance(p.get("data"), list) for p in pages):
        raise ReconciliationFailed('The usage report must be a page ({"data": [...]}) or a list of pages.')
    usage: dict[tuple[date, str], dict[str, int]] = {}
    for bucket in (b for page in pages for b in page["data"]):
        if not isinstance(bucket, dict) or not isinstance(bucket.get("results", []), list):
            raise ReconciliationFailed("The usage report has a bucket that is not an object with results.")
        day = _bucket_day(provider, bucket)
        for result in bucket.get("results", []):
            model = result.get("model") if isinstance(result, dict) else None
            if not model or not isinstance(model, str):
                raise ReconciliationFailed(f"The usage report has a result without a model on {day}: group it by model.")
            if len(model) > MODEL_NAME_MAX or text_clean(model) != model:  # a NUL or a lone surrogate: not storable
                raise ReconciliationFailed(
                    f"The usage report has a model name on {day} that is no model's: {model[:40].encode('unicode_escape').decode()!r}."
                )
            totals = usage.setdefault((day, model), dict.fromkeys(CLASSES[provider], 0))
            for name, tokens in _result_classes(provider, result, f"{day} {model}").items():
                totals[name] += tokens
    if sum(sum(classes.values()) for classes in usage.values()) > TOKENS_MAX:
        raise ReconciliationFailed(f"The usage report counts more than {TOKENS_MAX:,} tokens in all: no report of real usage does.")
    return usage


def _ledger_side(provider: str, start: date, end: date) -> dict[tuple[date, str], dict[str, dict]]:
    """The ledger's classes as this provider's report counts them."""
    ledger = selectors.platform_usage_by_day(provider=provider, start=start, end=end)
    if provider == "openai":
        for classes in ledger.values():
            uncached = classes["input_uncached"]
            for write in ("cache_write_5m", "cache_write_1h"):
                uncached["tokens"] += classes[write]["tokens"]
                uncached["cost"] += classes.pop(write)["cost"]
    return ledger


def _newest_rates(ledger: dict) -> dict[tuple[str, str], Decimal]:
    """Per (model, class): the rate of the latest day in the range that used one."""
    rates = {}
    for (_day, model), classes in sorted(ledger.items()):
        for name, values in classes.items():
            if values["rate"] is not None:
                rates[model, name] = values["rate"]
    return rates


def _status(ledger_tokens: int, provider_tokens: int, in_ledger: bool, at_provider: bool) -> str:
    if not in_ledger and provider_tokens:
        return Status.MISSING_IN_LEDGER
    if not at_provider and ledger_tokens:
        return Status.MISSING_AT_PROVIDER
    return Status.MATCHED if ledger_tokens == provider_tokens else Status.DRIFT


def usage_reconcile(*, arguments: ReconcileArguments, pages, source: str) -> ReconciliationReport:
    """Compare the report's pages with the ledger and store the report with one line per day,
    model and class that either side has. Beyond tolerance: a class's drift above the fraction
    of the ledger's tokens (any tokens on one side only are beyond it)."""
    provider, tolerance = arguments.provider, arguments.tolerance
    reported = {
        key: value
        for key, value in usage_report_parse(provider=provider, pages=pages).items()
        if arguments.start <= key[0] <= arguments.end
    }
    ledger = _ledger_side(provider, arguments.start, arguments.end)
    newest = _newest_rates(ledger)
    lines = []
    for day, model in sorted({*reported, *ledger}):
        theirs, ours = reported.get((day, model)), ledger.get((day, model))
        for name in CLASSES[provider]:
            mine = ours[name] if ours else {"tokens": 0, "cost": Decimal(0), "rate": None}
            provider_tokens = theirs[name] if theirs else 0
            drift = provider_tokens - mine["tokens"]
            rate = mine["rate"] if mine["rate"] is not None else newest.get((model, name))
            if not (mine["tokens"] or provider_tokens):
                continue
            over = abs(drift) > tolerance * mine["tokens"]
            lines.append(
                ReconciliationLine(
                    day=day,
                    model=model,
                    token_class=name,
                    ledger_tokens=mine["tokens"],
                    provider_tokens=provider_tokens,
                    drift_tokens=drift,
                    rate=rate,
                    ledger_cost=mine["cost"].quantize(COST_PLACES),
                    drift_cost=None if rate is None else (drift * rate / PER_MILLION).quantize(COST_PLACES),
                    status=_status(mine["tokens"], provider_tokens, ours is not None, theirs is not None),
                    over_tolerance=over,
                )
            )
    return _report_store(arguments=arguments, source=source, lines=lines, reported=reported, ledger=ledger)


def usage_reconcile_run(*, arguments: ReconcileArguments, file: str | None = None) -> ReconciliationReport:
    """Read the report from `file` (JSON: one page or a list of pages) or fetch it, then reconcile and store."""
    if file is None:
        pages = usage_report_fetch(provider=arguments.provider, start=arguments.start, end=arguments.end)
        source = _request(arguments.provider, arguments.start, arguments.end)[0]
    else:
        try:
            with open(file, encoding="utf-8") as handle:
                pages = json.load(handle)
        except OSError as exc:
            raise ReconciliationFailed(f"The file '{file}' could not be read: {exc.strerror or exc}.", {"field": "file"}) from None
        except (ValueError, RecursionError):
            raise ReconciliationFailed(
                f"The file '{file}' is not JSON (or nests deeper than a usage report does).", {"field": "file"}
            ) from None
        # A name that is not UTF-8 reaches Python with surrogates, which the database cannot store.
        source = f"file {file.encode('utf-8', 'backslashreplace').decode()}"
    return usage_reconcile(arguments=arguments, pages=pages, source=source)


def _days_with_usage(usage: dict, tokens) -> set[date]:
    return {day for (day, _), classes in usage.items() if any(tokens(v) for v in classes.values())}


def _report_store(*, arguments: ReconcileArguments, source: str, lines: list, reported: dict, ledger: dict) -> ReconciliationReport:
    provider_days = _days_with_usage(reported, lambda v: v)
    ledger_days = _days_with_usage(ledger, lambda v: v["tokens"])
    beyond = [line for line in lines if line.over_tolerance]
    unpriced = sum(1 for line in lines if line.drift_cost is None and line.drift_tokens)
    report = ReconciliationReport(
        provider=arguments.provider,
        date_from=arguments.start,
        date_to=arguments.end,
        source=source[:300],
        tolerance=arguments.tolerance,
        within_tolerance=not beyond,
        ledger_tokens=sum(line.ledger_tokens for line in lines),
        provider_tokens=sum(line.provider_tokens for line in lines),
        ledger_cost=sum((line.ledger_cost for line in lines), Decimal(0)),
        drift_cost=sum((line.drift_cost for line in lines if line.drift_cost is not None), Decimal(0)),
        days_missing_in_ledger=sorted(d.isoformat() for d in provider_days - ledger_days),
        days_missing_at_provider=sorted(d.isoformat() for d in ledger_days - provider_days),
    )
    report.summary = _summary(report, beyond, unpriced)
    with rls.privileged(reason="usage reconciliation: store the report", audited=False):
        report.save(using=rls.PRIVILEGED_ALIAS)
        for line in lines:
            line.report = report
        ReconciliationLine.objects.using(rls.PRIVILEGED_ALIAS).bulk_create(lines)
    return report


def _summary(report: ReconciliationReport, beyond: list, unpriced: int) -> str:
    span = f"{report.provider} from {report.date_from} to {report.date_to}"
    if not beyond:
        return f"The {span} matches the ledger within {report.tolerance} ({report.provider_tokens} tokens at the provider, {report.ledger_tokens} in the ledger)."
    worst = max(beyond, key=lambda line: abs(line.drift_tokens))
    parts = [
        f"The {span} drifts beyond {report.tolerance} in {len(beyond)} line(s)",
        f"the largest: {worst.day} {worst.model} {worst.token_class} {worst.drift_tokens:+d} tokens"
        + (f" (${worst.drift_cost:+})" if worst.drift_cost is not None else " (unpriced)"),
        f"priced drift ${report.drift_cost:+}",
    ]
    if report.days_missing_in_ledger:
        parts.append("days missing in the ledger: " + ", ".join(report.days_missing_in_ledger))
    if report.days_missing_at_provider:
        parts.append("days missing at the provider: " + ", ".join(report.days_missing_at_provider))
    if unpriced:
        parts.append(f"{unpriced} line(s) unpriced: no rate in the ledger for that model and class")
    return "; ".join(parts) + "."
