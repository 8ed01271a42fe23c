"""The SSRF guard: what is refused (at save and at send), and that the sender connects to the
address it checked. No external DNS: literal addresses, ``localhost`` and injected resolvers."""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
import threading
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from webhooks import ssrf
from webhooks.dispatcher import Outgoing, Sender, send
from webhooks.models import generate_secret

pytestmark = pytest.mark.django_db

REFUSED = [
    # loopback, in every spelling
    "https://127.0.0.1/hook",
    "https://127.255.255.254/hook",
    "https://[::1]/hook",
    "https://localhost/hook",
    "https://LOCALHOST./hook",
    "https://api.localhost/hook",
    "https://127.1/hook",
    "https://2130706433/hook",
    "https://0x7f.0.0.1/hook",
    "https://017700000001/hook",
    # private, CGNAT, link-local, cloud metadata
    "https://10.1.2.3/hook",
    "https://172.16.0.1/hook",
    "https://192.168.1.10/hook",
    "https://100.64.0.1/hook",
    "https://100.127.255.254/hook",
    "https://169.254.1.1/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://100.100.100.200/hook",
    "https://168.63.129.16/hook",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://[fd00:ec2::254]/hook",
    "https://[fe80::1]/hook",
    "https://[fc00::1]/hook",
    "https://[fd12:3456::1]/hook",
    "https://[fec0::1]/hook",
    # unspecified, multicast, reserved, documentation, broadcast
    "https://0.0.0.0/hook",
    "https://0.1.2.3/hook",
    "https://[::]/hook",
    "https://224.0.0.1/hook",
    "https://239.255.255.250/hook",
    "https://[ff02::1]/hook",
    "https://240.0.0.1/hook",
    "https://255.255.255.255/hook",
    "https://192.0.2.1/hook",
    "https://198.18.0.1/hook",
    # IPv4 inside IPv6: mapped, compatible, 6to4, NAT64, Teredo
    "https://[::ffff:127.0.0.1]/hook",
    "https://[::ffff:7f00:1]/hook",
    "https://[::ffff:10.0.0.1]/hook",
    "https://[::ffff:169.254.169.254]/hook",
    "https://[::127.0.0.1]/hook",
    "https://[2002:7f00:1::1]/hook",
    "https://[2002:a9fe:a9fe::1]/hook",
    "https://[64:ff9b::7f00:1]/hook",
    "https://[64:ff9b::a9fe:a9fe]/hook",
    "https://[64:ff9b:1::a00:1]/hook",
    "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook",
]


@pytest.mark.parametrize("url", REFUSED)
def test_internal_addresses_are_refused(url):
    with pytest.raises(ssrf.UnsafeURL) as caught:
        ssrf.check_url(url, resolver=lambda host, port: pytest.fail(f"resolved {host}"))
    assert caught.value.code == "forbidden_address"


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/",
        "https://[fd00:ec2::254]/",
        "https://[::ffff:169.254.169.254]/",
        "https://0.0.0.0/",
        "https://0.1.2.3/",
        "https://240.0.0.1/",
        "https://255.255.255.255/",
        "https://224.0.0.1/",
        "https://metadata.google.internal/",
    ],
)
def test_metadata_unspecified_and_multicast_stay_refused_when_private_targets_are_allowed(url):
    with pytest.raises(ssrf.UnsafeURL):
        ssrf.check_url(url, allow_private=True, resolver=lambda host, port: ["169.254.169.254"])


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.216.34/hook",
        "https://[2606:2800:220:1:248:1893:25c8:1946]/hook",
        "https://[::ffff:93.184.216.34]/hook",
        "https://[64:ff9b::5db8:d822]/hook",
        "https://[2002:5db8:d822::1]/hook",
        "https://8.8.8.8:8443/path?query=1",
    ],
)
def test_public_addresses_pass(url):
    target = ssrf.check_url(url, resolver=lambda host, port: pytest.fail("a literal needs no DNS"))
    assert target.addresses


def test_plain_http_needs_the_setting(settings):
    with pytest.raises(ssrf.UnsafeURL) as caught:
        ssrf.check_url("http://93.184.216.34/hook")
    assert caught.value.code == "https_required"
    settings.TASKFORGE_WEBHOOK_ALLOW_HTTP = True
    assert ssrf.check_url("http://93.184.216.34/hook").addresses == ("93.184.216.34",)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://93.184.216.34/x", "https_required"),
        ("file:///etc/passwd", "https_required"),
        ("gopher://127.0.0.1:6379/_INFO", "https_required"),
        ("https://user:pw@93.184.216.34/x", "userinfo"),
        ("not a url", "https_required"),
        ("https:///path-only", "invalid"),
        ("https://[fe80::1%25eth0]/x", "forbidden_address"),
    ],
)
def test_malformed_urls_are_refused(url, code):
    with pytest.raises(ssrf.UnsafeURL) as caught:
        ssrf.check_url(url)
    assert caught.value.code == code


def test_private_targets_are_allowed_only_by_the_setting(settings):
    with pytest.raises(ssrf.UnsafeURL):
        ssrf.check_url("https://127.0.0.1:8080/hook")
    settings.TASKFORGE_WEBHOOK_ALLOW_PRIVATE = True
    assert ssrf.check_url("https://127.0.0.1:8080/hook").addresses == ("127.0.0.1",)
    assert ssrf.check_url("https://localhost:8080/hook").addresses  # resolved from /etc/hosts
    with pytest.raises(ssrf.UnsafeURL):
        ssrf.check_url("https://metadata.google.internal/")


def test_every_resolved_address_must_be_public():
    def mixed(host, port):
        return ["93.184.216.34", "10.0.0.7"]

    with pytest.raises(ssrf.UnsafeURL, match=r"10\.0\.0\.7") as caught:
        ssrf.check_url("https://hooks.example.com/x", resolver=mixed)
    assert caught.value.code == "forbidden_address"

    target = ssrf.check_url(
        "https://hooks.example.com/x", resolver=lambda host, port: ["93.184.216.34", "2606:4700::1111"]
    )
    assert target.addresses == ("93.184.216.34", "2606:4700::1111")


def test_names_resolving_to_mapped_or_embedded_loopback_are_refused():
    for answer in ("::ffff:127.0.0.1", "64:ff9b::a9fe:a9fe", "2002:0a00:0001::1", "fd00:ec2::254"):
        with pytest.raises(ssrf.UnsafeURL):
            ssrf.check_url("https://rebind.example.com/", resolver=lambda host, port, a=answer: [a])


def test_unresolvable_host():
    def nxdomain(host, port):
        raise OSError("Name or service not known")

    with pytest.raises(ssrf.UnsafeURL) as caught:
        ssrf.check_url("https://nothing.invalid/", resolver=nxdomain)
    assert caught.value.code == "unresolvable"


def test_target_connects_to_the_address_with_the_host_name_in_host_and_sni():
    target = ssrf.check_url(
        "https://hooks.example.com:8443/x?y=1#frag", resolver=lambda h, p: ["93.184.216.34"]
    )
    assert str(target.request_url("93.184.216.34")) == "https://93.184.216.34:8443/x?y=1"
    assert target.host_header == "hooks.example.com:8443"
    assert target.extensions() == {"sni_hostname": "hooks.example.com"}
    v6 = ssrf.check_url("https://hooks.example.com/x", resolver=lambda h, p: ["2606:4700::1111"])
    assert str(v6.request_url("2606:4700::1111")) == "https://[2606:4700::1111]/x"
    assert v6.host_header == "hooks.example.com"


def test_address_problem_names_the_reason():
    def problem(a: str, **kw: bool) -> str | None:
        return ssrf.address_problem(ipaddress.ip_address(a), **kw)

    assert problem("127.0.0.1") == "a loopback address"
    assert problem("100.64.1.1") == "a shared (CGNAT) address"
    assert problem("169.254.169.254", allow_private=True) == "a cloud metadata address"
    assert "127.0.0.1" in problem("::ffff:127.0.0.1")
    assert problem("93.184.216.34") is None


# --- At send time: the sender connects to the address it validated -----------------------------
def outgoing(url: str) -> Outgoing:
    return Outgoing(
        delivery_id=uuid.uuid4(),
        claim_token=uuid.uuid4(),
        subscription_id=uuid.uuid4(),
        failures=0,
        url=url,
        message_id="msg_test",
        body='{"type":"webhook.test"}',
        secrets=(generate_secret(),),
    )


def test_send_connects_to_the_resolved_address_with_the_right_host_header(receiver, local_targets):
    calls = []

    def resolver(host, port):
        calls.append(host)
        return ["127.0.0.1"]

    # receiver.test does not exist in any DNS: the request can only arrive through the pin.
    outcome = send(outgoing(f"http://receiver.test:{receiver.port}/hook"), Sender(resolver=resolver))
    assert outcome.ok, outcome.error
    assert outcome.address == "127.0.0.1"
    assert calls == ["receiver.test"]  # resolved once: no second lookup to rebind
    assert receiver.hook_requests()[0].headers["host"] == f"receiver.test:{receiver.port}"


def test_dns_rebinding_to_a_private_address_is_refused_at_send(receiver, settings):
    settings.TASKFORGE_WEBHOOK_ALLOW_HTTP = True
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])

    def rebinding(host, port):
        return next(answers)

    url = f"http://rebind.test:{receiver.port}/hook"
    assert ssrf.check_url(url, resolver=rebinding).addresses == ("93.184.216.34",)  # at save: public
    outcome = send(outgoing(url), Sender(resolver=rebinding))  # at send: now loopback
    assert not outcome.ok
    assert "Refused before sending" in outcome.error and "loopback" in outcome.error
    assert receiver.hook_requests() == []


def test_send_refuses_a_url_that_became_internal(receiver):
    outcome = send(outgoing(receiver.url), Sender(allow_http=True))
    assert outcome.status_code is None
    assert "loopback" in outcome.error
    assert receiver.requests == []


# --- TLS: SNI and certificate checks use the host name, not the address ------------------------
@pytest.fixture
def tls_receiver(tmp_path: Path, receiver):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=receiver.test",
            "-addext",
            "subjectAltName=DNS:receiver.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    from tests.webhooks.conftest import make_handler

    server_names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(receiver))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client_context = ssl.create_default_context(cafile=str(cert))
    yield server.server_address[1], client_context, server_names
    server.shutdown()
    server.server_close()


def test_tls_uses_sni_and_verifies_the_certificate_against_the_host_name(
    tls_receiver, receiver, local_targets
):
    port, client_context, server_names = tls_receiver
    sender = Sender(resolver=lambda host, port: ["127.0.0.1"], verify=client_context)

    outcome = send(outgoing(f"https://receiver.test:{port}/hook"), sender)
    assert outcome.ok, outcome.error
    assert server_names == ["receiver.test"]
    assert receiver.hook_requests()[0].headers["host"] == f"receiver.test:{port}"

    # Same address, another name: the certificate does not match it, so nothing is sent.
    outcome = send(outgoing(f"https://impostor.test:{port}/hook"), sender)
    assert not outcome.ok
    assert "certificate" in outcome.error.lower() or "ssl" in outcome.error.lower()
    assert len(receiver.hook_requests()) == 1


def test_every_problem_of_a_url_comes_at_once_naming_the_setting_that_allows_it():
    """http:// to a private address: both problems in one answer, each with its setting."""
    with pytest.raises(ssrf.UnsafeURL) as refused:
        ssrf.check_url("http://10.0.0.5/hook", allow_http=False, allow_private=False)
    message = str(refused.value)
    assert refused.value.code == "https_required"
    assert "TASKFORGE_WEBHOOK_ALLOW_HTTP=1" in message
    assert "a private address" in message and "TASKFORGE_WEBHOOK_ALLOW_PRIVATE=1" in message
    with pytest.raises(ssrf.UnsafeURL) as refused:
        ssrf.check_url("http://localhost/hook", allow_http=False, allow_private=False)
    assert "TASKFORGE_WEBHOOK_ALLOW_HTTP=1" in str(refused.value)
    assert "TASKFORGE_WEBHOOK_ALLOW_PRIVATE=1" in str(refused.value)
    # Metadata stays refused whatever the settings: no setting is suggested for it.
    with pytest.raises(ssrf.UnsafeURL) as refused:
        ssrf.check_url("https://169.254.169.254/", allow_private=True)
    assert "TASKFORGE_WEBHOOK_ALLOW" not in str(refused.value)
