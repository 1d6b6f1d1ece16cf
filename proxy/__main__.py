"""The ``geogate`` command line; the only place that turns errors into exit codes.

Commands:
    serve           run the proxy
    run-demo        run the proxy and the demo meeting server together (``make run``)
    demo-upstream   run the demo meeting server alone
    probe           join a meeting through the proxy from a chosen address; say what happened
    report          a transparency report (Markdown, JSON or CSV) from audit files
    health          exit 0 when the running proxy answers (container health checks)
    check           validate the configuration, restrictions and databases; print a summary
    lookup          resolve an address to a region and list what bars it now
    geoip build     write a MaxMind-format database from a CSV
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from proxy import __version__
from proxy.config import Config, load_config, load_restrictions, parse_overrides
from proxy.errors import ConfigError, GeogateError, GeoIPError
from proxy.geo import GeoResolver, TrustedNetworks, client_address
from proxy.geoip_build import build_anonymous_from_csv, build_from_csv
from proxy.native import NATIVE
from proxy.policy.gate import RestrictionSet
from proxy.policy.restrictions import Restriction

__all__ = ["main"]

DEFAULT_CONFIG = Path("config/geogate.toml")


def _default_config() -> Path:
    return Path(os.environ.get("GEOGATE_CONFIG", DEFAULT_CONFIG))


def _utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _window(r: Restriction) -> str:
    if r.starts_at is None and r.ends_at is None:
        return "always"
    return f"{_utc(r.starts_at) if r.starts_at is not None else '...'} to " + (
        _utc(r.ends_at) if r.ends_at is not None else "..."
    )


def _describe(r: Restriction) -> str:
    regions = ",".join(sorted(r.regions)) or "-"
    extra = []
    if r.unknown.value == "deny":
        extra.append("unknown=deny")
    if r.anonymous.value == "deny":
        extra.append("anonymous=deny")
    if r.exempt:
        extra.append(f"exempt={len(r.exempt)} networks")
    tail = f" ({', '.join(extra)})" if extra else ""
    return (
        f"{r.id}: {r.mode.value} {regions} in {', '.join(r.meetings)}; {_window(r)}{tail}\n"
        f"      legal basis: {r.legal_basis} / authority: {r.authority}"
    )


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, parse_overrides(args.set or []))


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    """Validate everything and print a summary; 0 when valid, 1 with every error listed."""
    errors: list[str] = []
    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"{args.config}: invalid configuration", file=out)
        for issue in exc.issues:
            print(f"  error: {issue}", file=out)
        return 1
    rset: RestrictionSet | None = None
    try:
        rset = load_restrictions(config.restrictions.path)
    except ConfigError as exc:
        errors.extend(str(issue) for issue in exc.issues)
    resolver: GeoResolver | None = None
    try:
        resolver = GeoResolver(config.geoip.settings())
    except GeoIPError as exc:
        errors.append(str(exc))
    if errors:
        print(f"{args.config}: invalid", file=out)
        for error in errors:
            print(f"  error: {error}", file=out)
        return 1
    assert rset is not None and resolver is not None
    now = time.time()
    print(f"{config.source}: valid", file=out)
    print(f"  listen        {config.listen.host}:{config.listen.port}"
          f"{' (TLS)' if config.listen.tls_cert else ''}", file=out)
    print(f"  upstream      {config.upstream.url}", file=out)
    print(f"  adapter       {config.protocol.adapter} (denial: {config.protocol.denial.value})",
          file=out)
    trusted = len(config.client_address.trusted_proxies)
    print(f"  client addr   {trusted} trusted proxy networks, "
          f"header {config.client_address.header}",
          file=out)
    print(f"  geoip         {config.geoip.database} ({resolver.database_type}, built "
          f"{_utc(resolver.build_epoch)}, reader: {resolver.reader_name}"
          f"{'' if resolver.extension_in_use else ', about ten times slower'})", file=out)
    if config.geoip.anonymous_database:
        print(f"  anonymous-ip  {config.geoip.anonymous_database} (built "
              f"{_utc(resolver.anonymous_build_epoch)})", file=out)
    resolver.close()
    print(f"  restrictions  {config.restrictions.path}: {len(rset)} (version {rset.version}; "
          f"gate parts: {'C' if NATIVE else 'Python, C parts not built, slower'})", file=out)
    in_force = [r for r in rset.in_force(now) if r.enforcement.value == "enforce"]
    dry = [r for r in rset.dry_run() if r.in_force(now)]
    groups = (
        ("in force now", in_force),
        ("dry run, in force now", dry),
        ("scheduled", list(rset.scheduled(now))),
        ("expired", list(rset.expired(now))),
    )
    for title, items in groups:
        print(f"  {title}: {len(items)}", file=out)
        for r in items:
            print(f"    {_describe(r)}", file=out)
    boundary = rset.next_boundary(now)
    if boundary is not None:
        print(f"  next change   {_utc(boundary)}", file=out)
    return 0


def cmd_lookup(args: argparse.Namespace, out: TextIO) -> int:
    """Resolve an address and list which restrictions bar it from which meetings now."""
    config = _load(args)
    trusted = TrustedNetworks(config.client_address.trusted_proxies)
    header = config.client_address.header
    client = client_address(args.address, args.forwarded_for or [], trusted, header)
    rset = load_restrictions(config.restrictions.path)
    resolver = GeoResolver(config.geoip.settings())
    try:
        result = resolver.resolve(client.address)
    finally:
        resolver.close()
    print(f"address   {client.address} (from {client.via}; peer {client.peer})", file=out)
    if args.forwarded_for and client.via == "peer":
        print("          (the forwarded header was ignored: the peer is not a trusted proxy)",
              file=out)
    network = f", network {result.network}" if result.network else ""
    print(f"region    {result.location} ({result.how}{network})", file=out)
    now = time.time()
    if args.meeting is not None:
        decision = rset.decide(args.meeting, result.location, client.address, now)
        verdict = "admitted" if decision.allowed else f"DENIED by {decision.denied_by.id}"  # type: ignore[union-attr]
        print(f"meeting   {args.meeting}: {verdict}", file=out)
        for match in decision.matches:
            kind = "enforced" if match.enforced else "dry run"
            print(f"  matches {match.restriction.id} ({match.reason}, {kind})", file=out)
        return 0
    barred = False
    for r in rset.restrictions:
        if not r.in_force(now):
            continue
        reason = r.bars(result.location, client.address)
        if reason is None:
            continue
        barred = True
        kind = "bars" if r.enforcement.value == "enforce" else "would bar (dry run)"
        print(f"  {r.id} {kind} it from {', '.join(r.meetings)} ({reason})", file=out)
        print(f"      legal basis: {r.legal_basis} / authority: {r.authority}", file=out)
    if not barred:
        print("  no restriction in force bars this address", file=out)
    return 0


def cmd_geoip_build(args: argparse.Namespace, out: TextIO) -> int:
    """Write a MaxMind-format database from a CSV."""
    builder = build_anonymous_from_csv if args.anonymous else build_from_csv
    count = builder(Path(args.csv), Path(args.output), build_epoch=args.build_epoch)
    print(f"{args.output}: {count} networks from {args.csv}", file=out)
    return 0


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    """Run the proxy until SIGTERM or SIGINT."""
    from proxy.config import load_snapshot
    from proxy.service import configure_logging, run, serve

    overrides = parse_overrides(args.set or [])
    snapshot = load_snapshot(args.config, overrides)
    logging_config = snapshot.config.logging
    configure_logging(args.log_level or logging_config.level,
                      json=args.log_json or logging_config.json)
    demo = args.command == "run-demo"

    def ready(server: object) -> None:
        if not demo:
            return
        url = server.url  # type: ignore[attr-defined]
        print(DEMO_HELP.format(url=url, config=args.config), file=out, flush=True)

    run(serve(snapshot, overrides=overrides, demo_upstream=demo, ready=ready))
    return 0


DEMO_HELP = """
geogate is running on {url} in front of the demo meeting server ({config}).
Restrictions: config/restrictions.toml (demo-cn-memorial bars CN from memorial-* meetings).
Try it from another terminal (the demo database places 127.0.1.x in CN, 127.0.3.x in the US):

  .venv/bin/geogate probe {url} --meeting memorial-1 --from 127.0.1.7   # denied, close 4451
  .venv/bin/geogate probe {url} --meeting memorial-1 --from 127.0.3.7   # admitted
  .venv/bin/geogate probe {url} --meeting standup --from 127.0.1.7      # admitted
  .venv/bin/geogate lookup 127.0.1.7

Ctrl-C stops both.
"""


def cmd_demo_upstream(args: argparse.Namespace, out: TextIO) -> int:
    """Run the demo meeting server alone."""
    from proxy.demo_upstream import run as run_demo
    from proxy.service import configure_logging

    configure_logging(args.log_level)
    run_demo(args.host, args.port)
    return 0


def cmd_probe(args: argparse.Namespace, out: TextIO) -> int:
    """Join a meeting through the proxy and print what happened; exit 0 admitted, 3 denied."""
    import asyncio

    from proxy.probe import probe

    result = asyncio.run(probe(args.url, args.meeting, args.participant, source=args.source,
                               timeout=args.timeout))
    print(f"{result.outcome}: {result.detail}", file=out)
    if result.notice:
        for key in ("restriction", "region", "authority", "legal_basis", "notice_url"):
            if result.notice.get(key):
                print(f"  {key}: {result.notice[key]}", file=out)
    return {"admitted": 0, "denied": 3}.get(result.outcome, 4)


def cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    """Write a transparency report from audit files."""
    from proxy.report import run_report

    return run_report([Path(p) for p in args.audit], args.since, args.until, args.format, out)


def cmd_health(args: argparse.Namespace, out: TextIO) -> int:
    """Exit 0 when the proxy is alive: the admin /healthz answers, or the listener accepts."""
    import socket
    import urllib.request

    config = _load(args)
    admin, listen = config.admin, config.listen
    try:
        if admin.enabled:
            host = "127.0.0.1" if admin.host in ("0.0.0.0", "::") else admin.host
            with urllib.request.urlopen(f"http://{host}:{admin.port}/healthz",
                                        timeout=args.timeout) as response:
                print(f"healthy: admin /healthz answered {response.status}", file=out)
        else:
            host = "127.0.0.1" if listen.host in ("0.0.0.0", "::") else listen.host
            with socket.create_connection((host, listen.port), timeout=args.timeout):
                print(f"healthy: {host}:{listen.port} accepts connections", file=out)
    except OSError as exc:
        print(f"unhealthy: {exc}", file=out)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geogate", description="Geo-gating WebSocket proxy for video-conference signaling."
    )
    parser.add_argument("--version", action="version", version=f"geogate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, default=_default_config(),
                       help="main configuration file (default: $GEOGATE_CONFIG or "
                            f"{DEFAULT_CONFIG})")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a configuration key, such as listen.port=9000")

    for name, text in (("serve", "run the proxy"),
                       ("run-demo", "run the proxy and the demo meeting server together")):
        serve = sub.add_parser(name, help=text)
        with_config(serve)
        serve.add_argument("--log-level", default=None,
                           choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                           help="overrides logging.level of the configuration")
        serve.add_argument("--log-json", action="store_true", help="log JSON lines")
        serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo-upstream", help="run the demo meeting server")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8090)
    demo.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    demo.set_defaults(func=cmd_demo_upstream)

    probe = sub.add_parser("probe", help="join a meeting through the proxy; say what happened")
    probe.add_argument("url", help="the proxy's ws:// or wss:// URL")
    probe.add_argument("--meeting", required=True)
    probe.add_argument("--participant", default="geogate-probe")
    probe.add_argument("--from", dest="source", metavar="ADDRESS",
                       help="local source address, such as 127.0.1.7")
    probe.add_argument("--timeout", type=float, default=10.0)
    probe.set_defaults(func=cmd_probe)

    report = sub.add_parser("report", help="a transparency report from audit files")
    report.add_argument("audit", nargs="+", help="audit files (JSON lines, plain or gzip)")
    report.add_argument("--since", help="RFC 3339 start, inclusive (a date is midnight UTC)")
    report.add_argument("--until", help="RFC 3339 end, exclusive")
    report.add_argument("--format", choices=["md", "json", "csv"], default="md")
    report.set_defaults(func=cmd_report)

    health = sub.add_parser("health", help="exit 0 when the running proxy answers")
    with_config(health)
    health.add_argument("--timeout", type=float, default=2.0)
    health.set_defaults(func=cmd_health)

    check = sub.add_parser("check", help="validate configuration, restrictions and databases")
    with_config(check)
    check.set_defaults(func=cmd_check)

    lookup = sub.add_parser("lookup", help="resolve an address and show what bars it")
    with_config(lookup)
    lookup.add_argument("address", help="the socket peer address")
    lookup.add_argument("--forwarded-for", action="append", metavar="VALUE",
                        help="a forwarded header value as the peer sent it (repeatable)")
    lookup.add_argument("--meeting", help="decide for this meeting id")
    lookup.set_defaults(func=cmd_lookup)

    geoip = sub.add_parser("geoip", help="GeoIP database tools")
    geoip_sub = geoip.add_subparsers(dest="geoip_command", required=True, metavar="COMMAND")
    build = geoip_sub.add_parser("build", help="write a MaxMind-format database from a CSV")
    build.add_argument("csv", help="CSV of network,country,subdivision (or network,flags)")
    build.add_argument("-o", "--output", required=True, help="the .mmdb file to write")
    build.add_argument("--anonymous", action="store_true",
                       help="build an Anonymous-IP database from network,flags rows")
    build.add_argument("--build-epoch", type=int, default=None,
                       help="build time to record (Unix seconds; default now)")
    build.set_defaults(func=cmd_geoip_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Returns:
        The exit code: 0 success, 1 invalid input or a failed check, 2 bad usage.
    """
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args, sys.stdout)
    except ConfigError as exc:
        print("geogate: invalid configuration", file=sys.stderr)
        for issue in exc.issues:
            print(f"  error: {issue}", file=sys.stderr)
        return 1
    except GeogateError as exc:
        print(f"geogate: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"geogate: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
