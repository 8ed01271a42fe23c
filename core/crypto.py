"""Encryption at rest for stored credentials (project secrets, webhook and trigger signing secrets).

Fernet from ``cryptography`` (AES-128-CBC with an HMAC-SHA256, a timestamp and a version byte),
through ``MultiFernet``: the keys are ``settings.TASKFORGE_SECRETS_KEYS``, newest first. The first
key encrypts; every key decrypts; so a key rotates by putting a new one in front, running
``manage.py rotate_secrets_key`` (which re-encrypts every value under it) and only then dropping
the old one. Without keys (the embedded default only: DEBUG, tests, SQLite) one is made in
``settings.TASKFORGE_SECRETS_KEY_FILE`` on first use, mode 0600, and a line on stderr says so.

``EncryptedTextField`` is the one way a model keeps such a value: the column holds the Fernet token,
Python code sees the plain text. Equal plain texts give different tokens, so the field cannot be
searched or made unique.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import models


class Undecryptable(ImproperlyConfigured):
    """A stored value no configured key opens: a key was dropped before the rotation ran."""


def _key_from_file(path: Path) -> str:
    """The key kept in ``path``, made there first (atomically, 0600) when there is none yet."""
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(Fernet.generate_key().decode("ascii") + "\n")
    try:
        os.link(draft, path)  # the first process to get here wins; the others read its key
        print(
            f"Taskforge: TASKFORGE_SECRETS_KEYS is not set; made a key for stored secrets in {path} "
            "(keep it: what it encrypted cannot be read without it; set TASKFORGE_SECRETS_KEYS in "
            "production).",
            file=sys.stderr,
        )
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return path.read_text(encoding="ascii").strip()


def keys() -> list[str]:
    """The configured keys, newest first (from the environment, else the embedded key file)."""
    configured = list(settings.TASKFORGE_SECRETS_KEYS)
    if configured:
        return configured
    if settings.TASKFORGE_SECRETS_KEY_FILE is None:
        raise ImproperlyConfigured("TASKFORGE_SECRETS_KEYS is not set (see docs/security.md).")
    return [_key_from_file(Path(settings.TASKFORGE_SECRETS_KEY_FILE))]


@functools.cache
def _fernet() -> MultiFernet:
    return MultiFernet([Fernet(key.encode("ascii")) for key in keys()])


def _forget_keys(*, setting: str, **_: Any) -> None:
    if setting.startswith("TASKFORGE_SECRETS_KEY"):
        _fernet.cache_clear()


setting_changed.connect(_forget_keys)


def encrypt(plaintext: str) -> str:
    """The Fernet token of ``plaintext`` under the newest key."""
    return _fernet().encrypt(plaintext.encode("utf-8")).decode("ascii")


def decrypt(token: str) -> str:
    """The plain text of ``token``; ``Undecryptable`` when no configured key opens it."""
    try:
        return _fernet().decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeEncodeError) as exc:
        raise Undecryptable(
            "a stored secret cannot be decrypted with any key in TASKFORGE_SECRETS_KEYS "
            "(was a key removed before `manage.py rotate_secrets_key` ran?)"
        ) from exc


def secrets_in_force(
    current: str, previous: str, previous_until: datetime | None, now: datetime
) -> list[str]:
    """The secrets a rotated credential honours: the current one, and the previous one until
    ``previous_until`` (the rotation's grace; webhook signing and inbound trigger secrets)."""
    found = [current]
    if previous and previous_until is not None and previous_until > now:
        found.append(previous)
    return found


def rotate(token: str) -> str:
    """``token`` re-encrypted under the newest key (the plain text never leaves this call)."""
    try:
        return _fernet().rotate(token.encode("ascii")).decode("ascii")
    except InvalidToken as exc:
        raise Undecryptable("a stored secret cannot be decrypted with any configured key") from exc


class EncryptedTextField(models.TextField):
    """Text kept encrypted in its column (a Fernet token); Python sees the plain text.

    ``""`` and ``None`` are stored as they are (nothing to hide), so ``blank``/``null`` keep
    their meaning. Lookups by value cannot match (every encryption differs).
    """

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        if not value:
            return value
        return decrypt(value)

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if not value:
            return value
        return encrypt(value)


class Unreadable(dict):
    """What an ``EncryptedJSONField`` reads when no configured key opens its token: an empty
    object that says so (``reason``), so a reader can refuse it (a claim fails that run
    ``secret_missing``) instead of every read of the row raising. Never saved back: the values
    are lost either way, and the token stays until the row is next written."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class EncryptedJSONField(EncryptedTextField):
    """A JSON object kept encrypted (``EncryptedTextField`` over its JSON text): an execution's
    secret parameter values while it waits and runs. An empty object is stored as ``""``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("default", dict)
        kwargs.setdefault("blank", True)
        super().__init__(*args, **kwargs)

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Any:
        try:
            text = super().from_db_value(value, expression, connection)
        except Undecryptable as exc:
            return Unreadable(str(exc))
        return json.loads(text) if text else {}

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value else {}
        return value

    def get_prep_value(self, value: Any) -> Any:
        if not value:
            return ""
        return encrypt(json.dumps(value, ensure_ascii=False, separators=(",", ":")))

    def value_to_string(self, obj: Any) -> str:
        return ""  # never serialized (dumpdata, fixtures): the values would leave in clear
