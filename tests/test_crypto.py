"""core/crypto.py: encryption at rest, key rotation, the embedded key file, the settings check."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet
from django.db import connection
from django.db.models import TextField
from django.db.models.functions import Cast
from django.test import override_settings

from core import crypto
from webhooks.models import Subscription

OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def test_round_trip_and_every_token_differs():
    with override_settings(TASKFORGE_SECRETS_KEYS=[NEW]):
        first, second = crypto.encrypt("hunter2-ü"), crypto.encrypt("hunter2-ü")
        assert first != second and "hunter2" not in first
        assert crypto.decrypt(first) == crypto.decrypt(second) == "hunter2-ü"


def test_rotation_needs_both_keys_until_rotated():
    with override_settings(TASKFORGE_SECRETS_KEYS=[OLD]):
        token = crypto.encrypt("value")
    with override_settings(TASKFORGE_SECRETS_KEYS=[NEW, OLD]):
        assert crypto.decrypt(token) == "value"
        rotated = crypto.rotate(token)
    with override_settings(TASKFORGE_SECRETS_KEYS=[NEW]):
        assert crypto.decrypt(rotated) == "value"
        with pytest.raises(crypto.Undecryptable, match="rotate_secrets_key"):
            crypto.decrypt(token)
        with pytest.raises(crypto.Undecryptable):
            crypto.rotate(token)


def test_key_file_is_made_once_private_and_reused(tmp_path):
    path = tmp_path / "var" / "secrets.key"
    with override_settings(TASKFORGE_SECRETS_KEYS=[], TASKFORGE_SECRETS_KEY_FILE=path):
        token = crypto.encrypt("x")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        made = path.read_text()
    with override_settings(TASKFORGE_SECRETS_KEYS=[], TASKFORGE_SECRETS_KEY_FILE=path):
        assert crypto.decrypt(token) == "x"
        assert path.read_text() == made
        assert not [p for p in path.parent.iterdir() if p.name != "secrets.key"]


def test_no_keys_and_no_file_is_a_configuration_error():
    with (
        override_settings(TASKFORGE_SECRETS_KEYS=[], TASKFORGE_SECRETS_KEY_FILE=None),
        pytest.raises(crypto.ImproperlyConfigured, match="TASKFORGE_SECRETS_KEYS"),
    ):
        crypto.encrypt("x")


def _settings_error(env: dict[str, str]) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "TASKFORGE_", "DEBUG"))}
    base.update({"DJANGO_SECRET_KEY": "x" * 50, "DJANGO_SETTINGS_MODULE": "config.settings", **env})
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], env=base, capture_output=True, text=True
    )
    return done.stderr


def test_production_without_keys_says_what_to_set():
    err = _settings_error({"DATABASE_URL": "postgres://nobody@127.0.0.1:1/none"})
    assert "TASKFORGE_SECRETS_KEYS is not set" in err and "Fernet.generate_key" in err


def test_a_malformed_key_is_named_by_position_not_value():
    err = _settings_error({"TASKFORGE_SECRETS_KEYS": f"{NEW},not-a-key-value"})
    assert "entry 2 is not a Fernet key" in err and "not-a-key-value" not in err


@pytest.mark.django_db
def test_encrypted_field_keeps_only_ciphertext_in_the_column():
    from tests.factories import ProjectFactory

    project = ProjectFactory()
    hook = Subscription.objects.create(project=project, url="https://example.com/h", event_types=["*"])
    assert hook.secret
    # Cast to text: the column as stored, without the field's decryption.
    raw = [Cast(name, TextField()) for name in ("secret", "url")]
    row = " ".join(Subscription.objects.filter(pk=hook.pk).values_list(*raw).get())
    assert hook.secret not in row
    assert Subscription.objects.get(pk=hook.pk).secret == hook.secret


@pytest.mark.django_db(transaction=True)
def test_the_migration_encrypts_existing_signing_secrets_and_back():
    from django.db.migrations.executor import MigrationExecutor

    from tests.factories import ProjectFactory

    project = ProjectFactory()
    executor = MigrationExecutor(connection)
    executor.migrate([("webhooks", "0003_move_event_events")])
    clear = "whsec_" + "A" * 43
    old = executor.loader.project_state([("webhooks", "0003_move_event_events")]).apps
    old.get_model("webhooks", "Subscription").objects.create(
        project_id=project.pk, url="https://example.com/h", secret=clear
    )
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    secret, previous = Subscription.objects.values_list(
        Cast("secret", TextField()), Cast("previous_secret", TextField())
    ).get()
    assert clear not in secret and previous == ""
    assert Subscription.objects.get().secret == clear
