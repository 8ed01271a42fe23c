"""Create the database cache table whatever cache is configured at migrate time.

A database migrated while REDIS_URL was set used to lack it, so running it later without
Redis failed on the first rate-limited request. The table is tiny and unused with Redis.
"""

from django.core.management.commands.createcachetable import Command as CreateCacheTable
from django.db import migrations

CACHE_TABLE = "taskforge_cache"  # config.settings CACHES (the database fallback)


def create_cache_table(apps, schema_editor):
    command = CreateCacheTable()
    command.verbosity = 0
    command.create_table(schema_editor.connection.alias, CACHE_TABLE, dry_run=False)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0003_idempotency_key")]
    operations = [migrations.RunPython(create_cache_table, migrations.RunPython.noop)]
