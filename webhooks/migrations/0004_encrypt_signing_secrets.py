"""Signing secrets move from clear text to Fernet tokens (core.crypto, issue 21).

The columns become ``text`` and every stored value is encrypted in place, read and written with
plain SQL (the field itself would try to decrypt the clear text). Reversible: going back
decrypts them.
"""

from django.db import migrations

import core.crypto
import webhooks.models

FIELDS = ("secret", "previous_secret")


def _convert(apps, schema_editor, change) -> None:
    table = schema_editor.quote_name(apps.get_model("webhooks", "Subscription")._meta.db_table)
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"SELECT id, {', '.join(FIELDS)} FROM {table}")  # noqa: S608 - names only
        rows = cursor.fetchall()
        for pk, *values in rows:
            new = [change(value) if value else value for value in values]
            assignments = ", ".join(f"{field} = %s" for field in FIELDS)
            cursor.execute(f"UPDATE {table} SET {assignments} WHERE id = %s", [*new, pk])  # noqa: S608


def encrypt(apps, schema_editor) -> None:
    _convert(apps, schema_editor, core.crypto.encrypt)


def decrypt(apps, schema_editor) -> None:
    _convert(apps, schema_editor, core.crypto.decrypt)


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0003_move_event_events"),
    ]

    operations = [
        migrations.AlterField(
            model_name="subscription",
            name="previous_secret",
            field=core.crypto.EncryptedTextField(blank=True, editable=False),
        ),
        migrations.AlterField(
            model_name="subscription",
            name="secret",
            field=core.crypto.EncryptedTextField(default=webhooks.models.generate_secret, editable=False),
        ),
        migrations.RunPython(encrypt, decrypt, elidable=False),
    ]
