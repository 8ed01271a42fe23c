"""The one API-key authentication: ``Authorization: Api-Key <key>`` or ``Bearer <key>``.

djangorestframework-api-key ships a permission; this wraps its key lookup so that
``request.user`` is the key's owner and ``request.auth`` the key. Keys are read from the
Authorization header only (never the query string or body, so they stay out of logs).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts.models import ApiKey, User

SCHEMES = ("api-key", "bearer")
# Hash something of the right shape when a prefix is unknown, so the time an unknown
# prefix takes does not tell it apart from a known prefix with a wrong secret.
_DUMMY_HASH = ApiKey.objects.key_generator.hash("00000000.dummy-secret-for-timing")


class KeyAuthenticationFailed(exceptions.AuthenticationFailed):
    """401 that says which of missing/malformed/unknown/revoked/expired it was."""

    def __init__(self, detail: str, code: str) -> None:
        super().__init__(detail=detail, code=code)


class APIKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Api-Key"

    def authenticate(self, request: Request) -> tuple[User, ApiKey] | None:
        header = authentication.get_authorization_header(request)
        if not header:
            return None  # no credentials: session auth may still apply, else 401 "missing"
        try:
            scheme, _, raw = header.decode("latin-1").partition(" ")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            raise KeyAuthenticationFailed("Malformed Authorization header.", "malformed_key") from None
        if scheme.lower() not in SCHEMES:
            raise KeyAuthenticationFailed(
                "Unsupported Authorization scheme; use 'Api-Key <key>' or 'Bearer <key>'.",
                "malformed_key",
            )
        raw = raw.strip()
        prefix, dot, secret = raw.partition(".")
        if not dot or len(prefix) != 8 or not prefix.isalnum() or not secret or " " in raw:
            raise KeyAuthenticationFailed("Malformed API key: expected '<prefix>.<secret>'.", "malformed_key")
        return self._check(raw, prefix)

    def _check(self, raw: str, prefix: str) -> tuple[User, ApiKey]:
        generator = ApiKey.objects.key_generator
        api_key = ApiKey.objects.select_related("owner").filter(prefix=prefix).first()
        if api_key is None:
            generator.verify(raw, _DUMMY_HASH)
            raise KeyAuthenticationFailed("Unknown API key.", "unknown_key")
        if not generator.verify(raw, api_key.hashed_key):
            raise KeyAuthenticationFailed("Unknown API key.", "unknown_key")
        # Only a caller holding the real secret learns that the key was revoked or expired.
        if api_key.revoked:
            raise KeyAuthenticationFailed("This API key has been revoked.", "revoked_key")
        if api_key.has_expired:
            raise KeyAuthenticationFailed("This API key has expired.", "expired_key")
        if not api_key.owner.is_active:
            raise KeyAuthenticationFailed("The owner of this API key is inactive.", "inactive_user")
        self._touch(api_key)
        return api_key.owner, api_key

    @staticmethod
    def _touch(api_key: ApiKey) -> None:
        """Write last_used_at at most once per interval per key (not on every request)."""
        interval = settings.TASKFORGE_KEY_LAST_USED_INTERVAL
        now = timezone.now()
        if api_key.last_used_at and now - api_key.last_used_at < timedelta(seconds=interval):
            return
        if cache.add(f"apikey-used:{api_key.prefix}", 1, timeout=interval):
            ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
            api_key.last_used_at = now

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="taskforge"'
