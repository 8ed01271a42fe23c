"""How a delivery proves it comes from the trigger's sender, one function per ``auth`` mode.

Each takes the raw body, the request headers (a case-insensitive mapping), the query string
and the secrets the trigger accepts (the current one, and the previous one during a rotation);
it returns nothing, or raises ``Unauthenticated`` saying what was wrong (never a secret).
Every comparison is constant-time; Standard Webhooks signatures are checked by the
``standardwebhooks`` library (±5 minutes on ``webhook-timestamp``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping

from standardwebhooks import Webhook, WebhookVerificationError

from triggers.models import Auth

# Headers that carry a credential: never stored with a delivery.
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "webhook-signature",
        "x-hub-signature",
        "x-hub-signature-256",
        "x-gitlab-token",
        "x-api-key",
    }
)
BEARER = "bearer "
STORED_HEADERS_MAX = 100
STORED_HEADER_VALUE_MAX = 500


class Unauthenticated(Exception):
    pass


def _equal(given: str, secrets: list[str]) -> bool:
    """``given`` equals one of ``secrets``, each compared in constant time (all are compared)."""
    encoded = given.encode("utf-8", "surrogatepass")
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(encoded, secret.encode("utf-8"))
    return found


def standard(body: bytes, headers: Mapping[str, str], query: Mapping[str, str], secrets: list[str]) -> None:
    wanted = {
        name: headers.get(name, "") for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
    }
    missing = [name for name, value in wanted.items() if not value]
    if missing:
        raise Unauthenticated(f"Missing {', '.join(missing)} (Standard Webhooks signature).")
    last = "No valid signature."
    for secret in secrets:
        try:
            Webhook(secret).verify(body, wanted, json_parse=False)
            return
        except WebhookVerificationError as exc:
            last = f"{exc}."  # the timestamp's complaint is the same for every secret
    raise Unauthenticated(last)


def github(body: bytes, headers: Mapping[str, str], query: Mapping[str, str], secrets: list[str]) -> None:
    given = headers.get("x-hub-signature-256", "")
    if not given.startswith("sha256="):
        raise Unauthenticated("Missing X-Hub-Signature-256 (sha256=<hex HMAC of the body>).")
    expected = [
        "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest() for secret in secrets
    ]
    if not _equal(given, expected):
        raise Unauthenticated("X-Hub-Signature-256 does not match the body.")


def gitlab(body: bytes, headers: Mapping[str, str], query: Mapping[str, str], secrets: list[str]) -> None:
    given = headers.get("x-gitlab-token", "")
    if not given:
        raise Unauthenticated("Missing X-Gitlab-Token.")
    if not _equal(given, secrets):
        raise Unauthenticated("X-Gitlab-Token is not this trigger's token.")


def token(body: bytes, headers: Mapping[str, str], query: Mapping[str, str], secrets: list[str]) -> None:
    given = headers.get("authorization", "")
    if not given.lower().startswith(BEARER):
        raise Unauthenticated("Missing Authorization: Bearer <token>.")
    if not _equal(given[len(BEARER) :].strip(), secrets):
        raise Unauthenticated("The bearer token is not this trigger's token.")


def token_in_url(
    body: bytes, headers: Mapping[str, str], query: Mapping[str, str], secrets: list[str]
) -> None:
    given = query.get("token", "")
    if not given:
        raise Unauthenticated("Missing ?token=<token> in the URL.")
    if not _equal(given, secrets):
        raise Unauthenticated("The token is not this trigger's token.")


VERIFIERS: dict[str, Callable[[bytes, Mapping[str, str], Mapping[str, str], list[str]], None]] = {
    Auth.STANDARD: standard,
    Auth.GITHUB: github,
    Auth.GITLAB: gitlab,
    Auth.TOKEN: token,
    Auth.TOKEN_IN_URL: token_in_url,
}

# Where each mode finds the sender's delivery id and its event type (the header names).
DEDUPE_HEADERS: dict[str, str] = {
    Auth.STANDARD: "webhook-id",
    Auth.GITHUB: "x-github-delivery",
    Auth.GITLAB: "x-gitlab-event-uuid",
}
EVENT_HEADERS: dict[str, str] = {Auth.GITHUB: "x-github-event", Auth.GITLAB: "x-gitlab-event"}


def verify(
    auth: str, body: bytes, headers: Mapping[str, str], query: Mapping[str, str], secrets: list[str]
) -> None:
    VERIFIERS[auth](body, headers, query, secrets)


def storable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers kept with a delivery: lower-cased, credentials dropped, at most
    ``STORED_HEADERS_MAX`` of them, each value cut at ``STORED_HEADER_VALUE_MAX`` characters."""
    kept = [
        (name.lower(), value) for name, value in headers.items() if name.lower() not in CREDENTIAL_HEADERS
    ]
    return {name: value[:STORED_HEADER_VALUE_MAX] for name, value in kept[:STORED_HEADERS_MAX]}
