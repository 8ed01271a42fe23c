"""SSRF guard: which webhook URLs may be called, and the addresses the sender may connect to.

A URL is checked when a subscription is saved and again before every send. The host is
resolved once per send, every address it resolves to must be public, and the sender then
connects to one of *those* addresses (``Target.request_url``), never resolving again, so a
DNS answer that changes between check and connect (rebinding) cannot reach an internal host.
The Host header and TLS SNI still carry the host name, and the certificate is verified
against the host name, not the address.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> addresses as strings. Injected in tests; socket.getaddrinfo otherwise.
Resolver = Callable[[str, int], list[str]]

CGNAT = ipaddress.ip_network("100.64.0.0/10")
THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # "this host on this network": local on Linux
NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
TEREDO = ipaddress.ip_network("2001::/32")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# Instance-metadata and host-agent endpoints of the big clouds. Refused even when private
# targets are allowed: reaching them leaks credentials.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.123",  # AWS time sync
        "169.254.169.250",  # AWS
        "169.254.169.251",
        "169.254.169.253",  # AWS DNS
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure wire server (a public address, reachable from every VM)
        "192.0.0.192",  # Oracle Cloud (legacy)
        "fd00:ec2::254",  # AWS over IPv6
        "fd00:ec2::23",  # AWS time sync over IPv6
        "fd20:ce::254",  # GCP over IPv6
    )
)
METADATA_HOSTS = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"}
)


ALLOW_HTTP_HINT = "TASKFORGE_WEBHOOK_ALLOW_HTTP=1 allows http://, for tests and trusted internal networks"
ALLOW_PRIVATE_HINT = (
    "TASKFORGE_WEBHOOK_ALLOW_PRIVATE=1 allows loopback, private and link-local targets, "
    "for tests and trusted internal networks"
)


def _joined(problems: list[tuple[str, str]]) -> tuple[str, str]:
    """Several problems as one message (each a sentence) and the first one's code."""
    return " ".join(message for message, _ in problems), problems[0][1]


class UnsafeURL(ValueError):
    """The URL may not be called. ``code`` is the machine-readable reason."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA), in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in prefix for prefix in NAT64_PREFIXES):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(ip: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why a webhook may not connect to ``ip`` (a short phrase), or None when it may."""
    if ip.version == 6:
        if ip.scope_id:
            return "an IPv6 address with a zone"
        embedded = _embedded_ipv4(ip)  # type: ignore[arg-type]
        if embedded is not None:
            problem = address_problem(embedded, allow_private=allow_private)
            return f"an IPv6 form of {embedded} ({problem})" if problem else None
        if ip in TEREDO:
            return "a Teredo tunnel address"
        if ip in IPV4_COMPATIBLE and not ip.is_loopback and not ip.is_unspecified:
            return "a deprecated IPv4-compatible address"
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.version == 4 and ip in THIS_NETWORK:
        return "an address of the 0.0.0.0/8 (this host) range"
    if ip.version == 4 and ip.is_reserved:
        return "a reserved address"
    private_kind = None
    if ip.is_loopback:
        private_kind = "a loopback address"
    elif ip.is_link_local:
        private_kind = "a link-local address"
    elif ip.version == 4 and ip in CGNAT:
        private_kind = "a shared (CGNAT) address"
    elif ip.version == 6 and ip.is_site_local:
        private_kind = "a site-local address"
    elif ip.is_private:
        private_kind = "a private address"
    if private_kind is not None:
        return None if allow_private else private_kind
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "an address that is not globally routable"
    return None


@dataclass(frozen=True)
class Target:
    """A checked URL and the addresses it may be reached at."""

    url: httpx.URL
    addresses: tuple[str, ...]

    @property
    def host(self) -> str:
        return self.url.raw_host.decode("ascii")

    @property
    def host_header(self) -> str:
        default = {"https": 443, "http": 80}[self.url.scheme]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.url.port in (None, default) else f"{host}:{self.url.port}"

    def request_url(self, address: str) -> httpx.URL:
        """The URL with the host replaced by ``address``: the connection goes exactly there."""
        return self.url.copy_with(host=address, fragment=None)

    def extensions(self) -> dict[str, str]:
        """SNI (and so certificate verification) for the host name, not the address."""
        return {"sni_hostname": self.host} if self.url.scheme == "https" else {}


def _settings_flag(value: bool | None, name: str) -> bool:
    return bool(getattr(settings, name, False)) if value is None else value


def check_url(
    url: str,
    *,
    resolver: Resolver | None = None,
    allow_http: bool | None = None,
    allow_private: bool | None = None,
) -> Target:
    """Check ``url`` and resolve its host; raise ``UnsafeURL`` (with a code) if it is refused.

    ``allow_http`` and ``allow_private`` default to the TASKFORGE_WEBHOOK_ALLOW_* settings.
    """
    allow_http = _settings_flag(allow_http, "TASKFORGE_WEBHOOK_ALLOW_HTTP")
    allow_private = _settings_flag(allow_private, "TASKFORGE_WEBHOOK_ALLOW_PRIVATE")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UnsafeURL(f"Not a valid URL: {exc}.", "invalid") from None
    # Every problem of the URL in one answer (a client fixing them one request at a time met
    # them one by one), each naming the setting that would allow it, when one does.
    problems: list[tuple[str, str]] = []
    schemes = ("https", "http") if allow_http else ("https",)
    if parsed.scheme not in schemes:
        hint = "" if allow_http or parsed.scheme != "http" else f" ({ALLOW_HTTP_HINT})"
        problems.append(
            (
                "The URL must start with https://" + (" or http://" if allow_http else "") + hint + ".",
                "https_required",
            )
        )
    if parsed.userinfo:
        problems.append(("Credentials in the URL are not allowed; put a token in the path.", "userinfo"))
    if not parsed.raw_host:
        raise UnsafeURL(*_joined([*problems, ("The URL has no host.", "invalid")]))
    host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if "%" in host:
        raise UnsafeURL(
            *_joined([*problems, ("IPv6 zone identifiers are not allowed.", "forbidden_address")])
        )

    literal: IPAddress | None
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is None:
        try:
            _check_host_name(host, allow_private=allow_private)
            try:
                found = (resolver or system_resolver)(host, port)
            except (OSError, UnicodeError) as exc:
                raise UnsafeURL(f"The host {host!r} does not resolve ({exc}).", "unresolvable") from None
            if not found:
                raise UnsafeURL(f"The host {host!r} does not resolve.", "unresolvable")
        except UnsafeURL as exc:
            raise UnsafeURL(*_joined([*problems, (str(exc), exc.code)])) from None
    else:
        found = [str(literal)]

    addresses: list[str] = []
    for raw in found:
        try:
            ip = ipaddress.ip_address(raw)
        except ValueError:
            raise UnsafeURL(
                f"The host {host!r} resolved to {raw!r}, not an address.", "unresolvable"
            ) from None
        problem = address_problem(ip, allow_private=allow_private)
        if problem:
            where = "is" if literal is not None else f"resolves to {ip}, which is"
            private = address_problem(ip, allow_private=True) is None
            hint = f" ({ALLOW_PRIVATE_HINT})" if private else ""
            problems.append(
                (f"The host {host!r} {where} {problem}; webhooks cannot call it{hint}.", "forbidden_address")
            )
            break
        addresses.append(str(ip))
    if problems:
        raise UnsafeURL(*_joined(problems))
    return Target(url=parsed.copy_with(fragment=None), addresses=tuple(dict.fromkeys(addresses)))


def _check_host_name(host: str, *, allow_private: bool) -> None:
    # Numeric forms getaddrinfo accepts but ipaddress does not (127.1, 2130706433, 0x7f.0.0.1):
    # a parser difference is how filters are bypassed, so refuse them outright.
    try:
        socket.inet_aton(host)
    except OSError:
        pass
    else:
        raise UnsafeURL(f"{host!r} is an IPv4 address in a non-standard notation.", "forbidden_address")
    if host in METADATA_HOSTS:
        raise UnsafeURL(f"{host!r} is a cloud metadata host; webhooks cannot call it.", "forbidden_address")
    if not allow_private and (host == "localhost" or host.endswith(".localhost")):
        raise UnsafeURL(
            f"{host!r} is a loopback name; webhooks cannot call it ({ALLOW_PRIVATE_HINT}).",
            "forbidden_address",
        )
