"""TLS on both legs: the proxy terminating wss://, reloading its certificate, a wss:// upstream."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import orjson
from cryptography import x509
from websockets.asyncio.client import connect

from proxy.demo_upstream import DemoUpstream
from tests.helpers.proxy import TIMEOUT, Participant, ProxyFactory, restriction
from tests.helpers.tls import make_authority

RESTRICTIONS = restriction("cn", ["CN"], ["memorial-*"])


def client_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


async def served_serial(url: str, ca_file: Path) -> int:
    """The serial number of the certificate the proxy presents to a new connection."""
    ws = await connect(url, ssl=client_context(ca_file), proxy=None, open_timeout=TIMEOUT)
    der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
    await ws.close()
    return x509.load_der_x509_certificate(der).serial_number


async def test_proxy_terminates_tls(tmp_path: Path, proxies: ProxyFactory,
                                    upstream: DemoUpstream) -> None:
    """With tls_cert and tls_key the proxy listens on wss:// and relays and gates as usual."""
    ca = make_authority(tmp_path)
    cert, key, _ = ca.issue("proxy")
    server = await proxies.start(upstream.url, RESTRICTIONS,
                                 {"listen": {"tls_cert": str(cert), "tls_key": str(key)}})
    assert server.url.startswith("wss://")
    ws = await connect(server.url, ssl=client_context(ca.ca_file), proxy=None,
                       local_addr=("127.0.3.4", 0))
    await ws.send(orjson.dumps({"type": "join", "meeting": "m", "participant": "a"}).decode())
    assert orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "joined"
    await ws.close()
    barred = await connect(server.url, ssl=client_context(ca.ca_file), proxy=None,
                           local_addr=("127.0.1.4", 0))
    await barred.send(orjson.dumps(
        {"type": "join", "meeting": "memorial-1", "participant": "b"}).decode())
    assert orjson.loads(await asyncio.wait_for(barred.recv(), TIMEOUT))["type"] == "geogate.denied"
    await barred.wait_closed()
    assert barred.close_code == 4451


async def test_certificate_is_reloaded_when_files_change(tmp_path: Path, proxies: ProxyFactory,
                                                         upstream: DemoUpstream) -> None:
    """New certificate files are picked up for new connections; a broken one keeps the old."""
    ca = make_authority(tmp_path)
    cert, key, first = ca.issue("proxy", serial=1001)
    server = await proxies.start(upstream.url, RESTRICTIONS,
                                 {"listen": {"tls_cert": str(cert), "tls_key": str(key)}})
    assert await served_serial(server.url, ca.ca_file) == first
    new_cert, new_key, second = ca.issue("proxy-next", serial=1002)
    os.replace(new_cert, cert)
    os.replace(new_key, key)
    server.check_files()
    assert await served_serial(server.url, ca.ca_file) == second
    cert.write_text("not a certificate")
    os.utime(cert, ns=(1, 1))
    server.check_files()
    assert await served_serial(server.url, ca.ca_file) == second


async def test_wss_upstream_with_ca_file(tmp_path: Path, proxies: ProxyFactory) -> None:
    """The proxy reaches a wss:// upstream, verifying its certificate against ca_file."""
    ca = make_authority(tmp_path)
    cert, key, _ = ca.issue("upstream")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with DemoUpstream("127.0.0.1", 0, ssl=context) as tls_upstream:
        url = tls_upstream.url.replace("wss://127.0.0.1", "wss://localhost")
        server = await proxies.start(url, RESTRICTIONS, {"upstream": {"ca_file": str(ca.ca_file)}})
        _, joined = await Participant.join(server.url, "m", "a", "127.0.3.5")
        assert joined["type"] == "joined"


async def test_untrusted_upstream_certificate_closes_with_1014(tmp_path: Path,
                                                               proxies: ProxyFactory) -> None:
    """An upstream whose certificate does not verify is never used: the client gets 1014."""
    ca = make_authority(tmp_path)
    other = make_authority(tmp_path, "other-ca")
    cert, key, _ = ca.issue("upstream")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with DemoUpstream("127.0.0.1", 0, ssl=context) as tls_upstream:
        server = await proxies.start(tls_upstream.url, RESTRICTIONS,
                                     {"upstream": {"ca_file": str(other.ca_file)}})
        client = await Participant.connect(server.url, "127.0.3.6")
        await client.send({"type": "join", "meeting": "m", "participant": "a"})
        assert await client.closed() == (1014, "signaling server unavailable")
        assert tls_upstream.events == []
