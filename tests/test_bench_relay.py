"""The relay benchmark cannot rot: its core runs in-process against the demo server, and its pure
parts (frames, nginx.conf, percentiles, the report) give the expected text and numbers.

No nginx and no CPU pinning here; nothing asserts on timing.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

import pytest

from loadtests.bench_relay import (
    Child,
    JoinResult,
    MemoryResult,
    Options,
    ProcessGroup,
    RttResult,
    Section,
    SectionResults,
    Target,
    measure_joins,
    measure_memory,
    measure_rtt,
    parse_args,
    percentile,
    render_report,
    source_addresses,
)
from loadtests.nginx import NginxSettings, nginx_command, nginx_config
from loadtests.wsclient import (
    Endpoint,
    LoadError,
    close_all,
    echo_payload,
    encode_client_frame,
    mask_payload,
    open_participant,
)
from proxy.demo_upstream import DemoUpstream
from tests.helpers.proxy import ProxyFactory, restriction

SOURCES = source_addresses(4)


def endpoint_of(upstream: DemoUpstream) -> Endpoint:
    return Endpoint(upstream.host, upstream.port)


# ---- the core, in-process, against the demo meeting server ---------------------------------------


async def test_rtt_direct_counts_round_trips(upstream: DemoUpstream) -> None:
    """Echo load directly on the demo server yields round trips, latencies and CPU figures."""
    result = await measure_rtt(
        endpoint_of(upstream), proxy=ProcessGroup(os.getpid()), upstream=None,
        connections=5, duration=0.5, warmup=0.1, sources=SOURCES, timeout=10.0,
    )
    assert result.connections == 5
    assert result.round_trips > 0
    assert result.errors == 0 and result.lost == 0
    assert 0 < result.p50 <= result.p99
    assert result.proxy_cpu is not None and result.proxy_cpu >= 0
    figures = result.figures()
    assert figures["round_trips_per_s"] is not None and figures["round_trips_per_s"] > 0
    assert figures["upstream_cpu_us"] is None


async def test_joins_direct_counts_joins(upstream: DemoUpstream) -> None:
    """A small join storm completes every join with its first echo and leaves no connection."""
    result = await measure_joins(
        endpoint_of(upstream), proxy=ProcessGroup(os.getpid()), upstream=None,
        joins=20, concurrency=5, sources=SOURCES, timeout=10.0,
    )
    assert result.joins == 20
    assert result.failures == 0 and result.first_error == ""
    assert 0 < result.p50 <= result.p99
    assert upstream.rooms == {}  # every participant closed and left its meeting


async def test_memory_direct_reads_rss(upstream: DemoUpstream) -> None:
    """Idle participants are all admitted and RSS is read before and after."""
    group = ProcessGroup(os.getpid())
    result = await measure_memory(
        endpoint_of(upstream), proxy=group, upstream=group, participants=20, concurrency=5,
        sources=SOURCES, timeout=10.0,
    )
    assert result.participants == 20 and result.failures == 0
    assert result.proxy_rss_before is not None and result.proxy_rss_before > 0
    assert result.proxy_rss_after is not None and result.upstream_rss_after > 0


async def test_core_runs_through_geogate(upstream: DemoUpstream, proxies: ProxyFactory) -> None:
    """The lean client's upgrade, join and echo work through the proxy too."""
    server = await proxies.start(upstream.url)
    target = Endpoint("127.0.0.1", server.port)
    joins = await measure_joins(target, proxy=None, upstream=None, joins=10, concurrency=5,
                                sources=SOURCES, timeout=10.0)
    assert joins.joins == 10 and joins.failures == 0
    rtt = await measure_rtt(target, proxy=None, upstream=None, connections=3, duration=0.3,
                            warmup=0.0, sources=SOURCES, timeout=10.0)
    assert rtt.round_trips > 0 and rtt.errors == 0


async def test_barred_join_is_an_error(upstream: DemoUpstream, proxies: ProxyFactory) -> None:
    """A denial notice is reported as a failed join, never counted as a join."""
    server = await proxies.start(upstream.url, restriction("bench-cn", ["CN"], ["bench-*"]))
    with pytest.raises(LoadError, match=r"geogate\.denied"):
        await open_participant(Endpoint("127.0.0.1", server.port), meeting="bench-1",
                               participant="p1", source="127.0.1.5", timeout=10.0)
    admitted = await open_participant(Endpoint("127.0.0.1", server.port), meeting="bench-1",
                                      participant="p2", source="127.0.3.5", timeout=10.0)
    assert await close_all([admitted]) == 0


async def test_refused_upgrade_is_an_error() -> None:
    """A server answering the upgrade with an HTTP error fails the participant."""
    async with DemoUpstream(require_subprotocol=True, record_events=False) as strict:
        with pytest.raises(LoadError, match=r"upgrade refused: HTTP/1\.1 400"):
            await open_participant(endpoint_of(strict), meeting="m", participant="p",
                                   timeout=10.0)


# ---- pure parts ----------------------------------------------------------------------------------


def test_masking_is_an_involution() -> None:
    """Masking twice with the same key gives the payload back; frames carry the mask bit."""
    payload = echo_payload(100)
    mask = b"\x01\x02\x03\x04"
    assert len(payload) == 100
    assert mask_payload(mask_payload(payload, mask), mask) == payload
    frame = encode_client_frame(1, payload, mask)
    assert frame[:2] == bytes((0x81, 0x80 | 100))
    assert frame[2:6] == mask and mask_payload(frame[6:], mask) == payload


def test_frame_lengths_use_extended_fields() -> None:
    """Payloads of 126+ and 65536+ bytes get the 16- and 64-bit length fields."""
    mask = b"abcd"
    assert encode_client_frame(2, b"x" * 200, mask)[1:4] == bytes((0x80 | 126, 0, 200))
    big = encode_client_frame(2, b"x" * 70000, mask)
    assert big[1] == 0x80 | 127 and int.from_bytes(big[2:10], "big") == 70000


def test_echo_payload_rejects_too_small() -> None:
    """An echo message smaller than its JSON skeleton is refused."""
    with pytest.raises(ValueError, match="at least"):
        echo_payload(10)


def test_endpoint_request_is_an_upgrade() -> None:
    """The pre-built request is a version-13 upgrade with a bracketed IPv6 host."""
    request = Endpoint("::1", 8080, "/room").request
    assert request.startswith(b"GET /room HTTP/1.1\r\nHost: [::1]:8080\r\n")
    assert b"Sec-WebSocket-Version: 13\r\n" in request and request.endswith(b"\r\n\r\n")


def test_nginx_config_is_a_plain_websocket_proxy(tmp_path: Path) -> None:
    """nginx.conf: foreground, one worker, big backlog, upgrade headers, no access log."""
    settings = NginxSettings(prefix=tmp_path, listen_port=8123, upstream_host="127.0.0.1",
                             upstream_port=8124)
    text = nginx_config(settings)
    for line in ("daemon off;", "master_process on;", "worker_processes 1;", "access_log off;",
                 "listen 127.0.0.1:8123 backlog=4096;", "proxy_pass http://127.0.0.1:8124;",
                 "proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;",
                 'proxy_set_header Connection "upgrade";', "proxy_read_timeout 3600s;",
                 f"error_log {tmp_path}/error.log warn;"):
        assert line in text, line
    assert nginx_command("/usr/sbin/nginx", settings)[-2:] == ["-e", str(tmp_path / "error.log")]
    with pytest.raises(ValueError, match="listen_port"):
        NginxSettings(prefix=tmp_path, listen_port=0, upstream_host="h", upstream_port=1)


def test_percentile_is_nearest_rank() -> None:
    """p50 and p99 are nearest-rank values; no samples give NaN."""
    samples = [float(i) for i in range(1, 101)]
    assert percentile(samples, 0.5) == 50.0
    assert percentile(samples, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) != percentile([], 0.5)  # NaN


def test_process_group_reads_this_process() -> None:
    """CPU time and RSS of a live process are read from /proc."""
    group = ProcessGroup(os.getpid(), children=True)
    assert os.getpid() in group.pids()
    assert group.cpu_seconds() > 0
    assert group.rss_bytes() > 1 << 20


def test_report_ratios_and_verdicts() -> None:
    """The report shows medians, per-round ratios and a NOT MET verdict with the overshoot."""
    rtt = SectionResults("rtt-100", Section.RTT, "Round trips, 100 connections", 100)
    for cpu_g, cpu_n in ((0.30, 0.20), (0.33, 0.20), (0.28, 0.20)):
        rtt.add(Target.GEOGATE, RttResult(100, 10_000, 5.0, 1e-3, 2e-3, cpu_g, 0.5))
        rtt.add(Target.NGINX, RttResult(100, 10_000, 5.0, 1e-3, 2e-3, cpu_n, 0.5))
    joins = SectionResults("joins", Section.JOINS, "Joins", 2000)
    joins.add(Target.GEOGATE, JoinResult(2000, 0, 1.0, 0.01, 0.02, 0.4, 1.0))
    joins.add(Target.NGINX, JoinResult(2000, 0, 1.0, 0.01, 0.02, 0.2, 1.0))
    memory = SectionResults("memory", Section.MEMORY, "Memory", 5000)
    memory.add(Target.GEOGATE, MemoryResult(5000, 0, 10 << 20, (10 << 20) + 5000 * 4096, 1, 2))
    memory.add(Target.NGINX, MemoryResult(5000, 0, 10 << 20, (10 << 20) + 5000 * 18432, 1, 2))
    assert rtt.ratio("proxy_cpu_us") == pytest.approx(1.5)
    text = render_report([rtt, joins, memory], [Target.GEOGATE, Target.NGINX])
    assert "proxy CPU per round trip (us)" in text and "1.50x" in text
    verdict = "CPU per round trip, 100 connections: geogate 30.0 us, nginx 20.0 us, ratio 1.50x"
    assert verdict in text
    assert "NOT MET, 20% over the target" in text
    assert "[met    ] CPU per join" in text
    assert "geogate 4.0 KiB, nginx 18.0 KiB" in text


def test_quick_mode_is_tiny() -> None:
    """--quick runs one round at tiny sizes; bad values are usage errors."""
    options = parse_args(["--quick", "--skip-nginx"])
    assert options.quick and options.rounds == 1 and max(options.sizes) <= 50
    assert options.idle <= 500 and options.joins <= 200 and options.skip_nginx
    assert parse_args(["--only", "joins"]).sections == (Section.JOINS,)
    with pytest.raises(SystemExit):
        parse_args(["--sizes", "0"])
    with pytest.raises(ValueError, match="differ"):
        Options(proxy_cpu=1, load_cpu=1)


def test_benchmark_servers_run_without_core_dumps(tmp_path: Path) -> None:
    """A crashing server cannot leave a core file in the tree; the benchmark keeps its own limit."""
    before = resource.getrlimit(resource.RLIMIT_CORE)
    log = tmp_path / "child.log"
    # The child reports its soft limit at once, then waits until its hard limit is 0 as well.
    script = ("import resource, time\n"
              "print(resource.getrlimit(resource.RLIMIT_CORE)[0], flush=True)\n"
              "while resource.getrlimit(resource.RLIMIT_CORE)[1]:\n"
              "    time.sleep(0.001)\n"
              "print('hard 0')\n")
    child = Child("probe", [sys.executable, "-c", script], log=log, cpu=None)
    child.start()
    assert child.process is not None and child.process.wait(timeout=30) == 0
    assert log.read_text().split("\n")[:2] == ["0", "hard 0"]
    assert resource.getrlimit(resource.RLIMIT_CORE) == before
