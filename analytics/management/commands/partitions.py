"""manage.py partitions list|ensure|prune — monthly partitions of the analytics tables."""

from datetime import date

from django.core.management.base import BaseCommand, CommandError

from config.db import partitions

MAX_MONTHS_AHEAD = 120  # ten years of empty partitions is already more than any plan needs


class Command(BaseCommand):
    help = "List, create ahead (ensure) or drop past retention (prune) the monthly partitions."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["list", "ensure", "prune"])
        parser.add_argument("--table", help="one partitioned table (default: all registered)")
        parser.add_argument("--months-ahead", type=int, help="ensure: months to create past the current one")
        parser.add_argument("--today", help="act as if today were this date (YYYY-MM-DD)")

    def handle(self, *args, action, table=None, months_ahead=None, today=None, **options):
        registered = partitions.partitioned_tables()
        if table and table not in registered:
            raise CommandError(f"'{table}' is not a partitioned table; choose one of: {', '.join(registered)}.")
        try:
            day = date.fromisoformat(today) if today else None
        except ValueError as exc:
            raise CommandError(f"--today must be a date like 2026-12-31, not '{today}'.") from exc
        if months_ahead is not None and not 0 <= months_ahead <= MAX_MONTHS_AHEAD:
            raise CommandError(f"--months-ahead must be from 0 to {MAX_MONTHS_AHEAD}.")
        for name in [table] if table else registered:
            if action == "list":
                self.stdout.write(name)
                for p in partitions.partitions_list(name, count_rows=True):
                    span = "DEFAULT" if p.is_default else f"{p.start} .. {p.end}"
                    self.stdout.write(f"  {p.name:<40} {span:<26} {p.rows} rows")
                continue
            try:
                if action == "ensure":
                    created = partitions.partition_ensure(name, months_ahead=months_ahead, today=day)
                else:
                    dropped = partitions.partition_prune(name, retention_months=registered[name]["retention_months"], today=day)
            except ValueError as exc:  # the months it would name fall outside years 1 to 9999 (computed before any DDL)
                raise CommandError(
                    f"{name}: the months to {action} from {day or 'today'} fall outside the calendar (years 1 to 9999)."
                ) from exc
            if action == "ensure":
                self.stdout.write(f"{name}: created {', '.join(created) or 'nothing (all present)'}")
            else:
                self.stdout.write(f"{name}: dropped {', '.join(dropped) or 'nothing (all within retention)'}")
