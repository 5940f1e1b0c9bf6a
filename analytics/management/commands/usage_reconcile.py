"""manage.py usage_reconcile --provider openai|anthropic --from DATE --to DATE [--file FILE]"""

from django.core.management.base import BaseCommand, CommandError

from analytics import reconcile
from analytics.errors import ReconciliationFailed
from config.db import rls


class Command(BaseCommand):
    help = (
        "Compare the provider's organization usage report (fetched with its admin key, or read from --file) with the "
        "ledger's calls on the platform's keys, per UTC day, model and token class; store the report (admin) and exit "
        "non-zero when any drift exceeds USAGE_RECONCILE_TOLERANCE."
    )

    def add_arguments(self, parser):
        parser.add_argument("--provider", required=True, help="openai or anthropic")
        parser.add_argument("--from", dest="start", required=True, help="first UTC day, YYYY-MM-DD")
        parser.add_argument("--to", dest="end", required=True, help="last UTC day (inclusive), YYYY-MM-DD")
        parser.add_argument("--file", help="the report's JSON (one page or a list of pages) instead of fetching it")

    def handle(self, *args, provider, start, end, file=None, **options):
        try:
            arguments = reconcile.reconcile_arguments(provider=provider, start=start, end=end)
            report = reconcile.usage_reconcile_run(arguments=arguments, file=file)
        except ReconciliationFailed as exc:
            raise CommandError(exc.message) from exc
        with rls.privileged(reason="usage reconciliation: print the report's lines", audited=False):
            lines = list(report.lines.exclude(status="matched"))
        for line in lines:
            cost = "unpriced" if line.drift_cost is None else f"${line.drift_cost:+}"
            self.stdout.write(
                f"{line.day} {line.model:<32} {line.token_class:<15} {line.get_status_display():<24} "
                f"ledger {line.ledger_tokens} provider {line.provider_tokens} drift {line.drift_tokens:+d} ({cost})"
            )
        if not report.within_tolerance:
            raise CommandError(f"{report.summary} Report {report.pk}.")
        self.stdout.write(self.style.SUCCESS(f"{report.summary} Report {report.pk}."))
