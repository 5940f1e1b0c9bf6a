"""`migrate` runs as the owner role by default: the web app's role may not change the schema."""

from django.core.management.commands.migrate import Command as MigrateCommand

from config.db.routers import OWNER_ALIAS


class Command(MigrateCommand):
    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.set_defaults(database=OWNER_ALIAS)
