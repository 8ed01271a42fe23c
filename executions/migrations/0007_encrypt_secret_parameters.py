"""Secret parameter values move from clear JSON to a Fernet token of it (core.crypto, issue 21),
and a run whose project secret is gone fails ``secret_missing``.

The column becomes ``text``; the values waiting in it (queued and running executions) are
encrypted in place with plain SQL (the field would try to decrypt the clear JSON). An empty
object is stored as "". Reversible: going back decrypts them.
"""

from django.db import migrations, models

import core.crypto


def _convert(apps, schema_editor, change) -> None:
    table = schema_editor.quote_name(apps.get_model("executions", "Execution")._meta.db_table)
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"SELECT id, secret_parameters FROM {table}")  # noqa: S608 - names only
        for pk, value in cursor.fetchall():
            new = change(value or "")
            if new != value:
                cursor.execute(f"UPDATE {table} SET secret_parameters = %s WHERE id = %s", [new, pk])  # noqa: S608


def encrypt(apps, schema_editor) -> None:
    _convert(apps, schema_editor, lambda text: "" if text in ("", "{}") else core.crypto.encrypt(text))


def decrypt(apps, schema_editor) -> None:
    _convert(apps, schema_editor, lambda text: core.crypto.decrypt(text) if text else "{}")


class Migration(migrations.Migration):
    dependencies = [
        ("executions", "0006_queue"),
    ]

    operations = [
        migrations.AlterField(
            model_name="execution",
            name="error",
            field=models.CharField(
                blank=True,
                choices=[
                    ("nonzero_exit", "Non-zero exit code"),
                    ("timeout", "Timed out"),
                    ("cancelled", "Cancelled"),
                    ("worker_lost", "Worker lost"),
                    ("worker_shutdown", "Worker shut down"),
                    ("spawn_failed", "Could not start the script"),
                    ("killed_by_signal", "Killed by a signal (e.g. a resource limit)"),
                    ("memory_exceeded", "Memory limit exceeded"),
                    ("worker_error", "The worker could not store the outcome"),
                    ("secret_missing", "A project secret it refers to no longer exists"),
                ],
                max_length=20,
            ),
        ),
        migrations.AlterField(
            model_name="execution",
            name="secret_parameters",
            field=core.crypto.EncryptedJSONField(blank=True, default=dict, editable=False),
        ),
        migrations.RunPython(encrypt, decrypt, elidable=False),
    ]
