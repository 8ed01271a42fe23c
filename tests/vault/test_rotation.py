"""``manage.py rotate_secrets_key``: every encrypted column of every model, found generically,
re-encrypted under the newest key, so the old key can go and runs still get their secrets."""

from __future__ import annotations

from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db.models import TextField
from django.db.models.functions import Cast
from django.test import override_settings

from core import crypto
from executions.models import Execution, ExecutionStatus
from templates_app import services as template_services
from tests.vault.test_runs import stdout, template
from vault import services
from vault.models import Secret
from vault.rotation import encrypted_columns
from webhooks.models import Subscription
from webhooks.services import subscription_create

pytestmark = pytest.mark.django_db

OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def raw(model, field):
    return model.objects.values_list(Cast(field, TextField()), flat=True)


def test_every_encrypted_column_is_found():
    found = {model._meta.label: names for model, names in encrypted_columns()}
    assert found["vault.Secret"] == ["value"]
    assert found["webhooks.Subscription"] == ["secret", "previous_secret"]
    assert found["executions.Execution"] == ["secret_parameters"]


def test_old_key_values_are_readable_with_the_new_key_alone_after_rotating(user, project, inline_worker):
    with override_settings(TASKFORGE_SECRETS_KEYS=[OLD]):
        services.secret_create(project=project, actor=user, name="DEPLOY_TOKEN", value="value-under-old")
        hook, signing = subscription_create(project=project, actor=user, url="https://93.184.216.34/h")
        template(user, project, script="printf '%s' {{ token }} | base64 -w0")
        template_services.template_trigger(
            template=project.templates.get(), actor=user, parameters={"token": {"secret": "DEPLOY_TOKEN"}}
        )
        template_services.template_trigger(
            template=project.templates.get(), actor=user, parameters={"token": "passed-under-old"}
        )
        before = {
            str(t)
            for t in [
                *raw(Secret, "value"),
                *raw(Subscription, "secret"),
                *raw(Execution, "secret_parameters"),
            ]
        }

    with override_settings(TASKFORGE_SECRETS_KEYS=[NEW]), pytest.raises(crypto.Undecryptable):
        Secret.objects.get()  # the new key alone cannot read them yet

    out = StringIO()
    with override_settings(TASKFORGE_SECRETS_KEYS=[NEW, OLD]):
        call_command("rotate_secrets_key", "--batch-size", "1", stdout=out)
    lines = out.getvalue().splitlines()
    assert "vault.Secret: 1/1" in lines and "webhooks.Subscription: 1/1" in lines
    assert "executions.Execution: 1/2" in lines and "executions.Execution: 2/2" in lines
    assert lines[-1].startswith("Re-encrypted 4 row(s)")

    with override_settings(TASKFORGE_SECRETS_KEYS=[NEW]):
        after = {
            str(t)
            for t in [
                *raw(Secret, "value"),
                *raw(Subscription, "secret"),
                *raw(Execution, "secret_parameters"),
            ]
        }
        assert not before & after  # every token changed
        assert Secret.objects.get().value == "value-under-old"
        assert Subscription.objects.get(pk=hook.pk).secret == signing
        assert inline_worker.run_pending() == 2
        import base64

        got = sorted(base64.b64decode(stdout(e)).decode() for e in Execution.objects.all())
        assert got == ["passed-under-old", "value-under-old"]
        assert set(Execution.objects.values_list("status", flat=True)) == {ExecutionStatus.SUCCEEDED}


def test_a_value_no_key_opens_stops_the_rotation_naming_the_row(user, project):
    with override_settings(TASKFORGE_SECRETS_KEYS=[OLD]):
        secret = services.secret_create(project=project, actor=user, name="LOST", value="v" * 10)
    with override_settings(TASKFORGE_SECRETS_KEYS=[NEW]), pytest.raises(CommandError, match=str(secret.pk)):
        call_command("rotate_secrets_key", stdout=StringIO())
