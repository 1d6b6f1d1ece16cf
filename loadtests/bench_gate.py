"""Cost of one full gate decision: client address, GeoIP lookup, restriction check.

Builds a GeoIP database of random networks and restriction sets of 10 and 10,000 restrictions over
100,000 meeting ids, then times decisions one by one (perf_counter_ns around each) with the GeoIP
cache off (uncached: every decision reads the database) and on (cached: addresses repeat). Prints
decisions per second and p50/p99/p99.9 per decision, and the ratio of 10,000 to 10 restrictions.

Every configuration first runs once untimed (the first pass pays for building the resolver's
shared per-network results and growing the heap: it measured up to 1.8x slower). The two set
sizes are then timed in alternating blocks of decisions, so that a slow spell of a shared machine
falls on both rather than on whichever ran then; the ratio is taken within each round.

Run: ``make bench-gate`` (or ``.venv/bin/python loadtests/bench_gate.py --help``).
Targets: p99 under 20 us uncached; no more than 1.5x slower at 10,000 restrictions than at 10
(judged at p50 and p99, cached and uncached).
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from proxy.geo import (
    ForwardedHeader,
    GeoIPSettings,
    GeoResolver,
    TrustedNetworks,
    client_address,
)
from proxy.geoip_build import CsvRow, build_database
from proxy.native import NATIVE
from proxy.policy.gate import RestrictionSet
from proxy.policy.restrictions import Mode, Restriction
from proxy.service import tune_gc

COUNTRIES = [
    "US", "CN", "DE", "FR", "GB", "RU", "IN", "BR", "JP", "KR", "HK", "TW", "IR", "TR", "IT", "ES",
    "NL", "SE", "PL", "UA", "CA", "MX", "AR", "AU", "NZ", "ZA", "EG", "NG", "KE", "SA", "AE", "IL",
    "PK", "BD", "ID", "MY", "SG", "TH", "VN", "PH", "CH", "AT", "BE", "DK", "NO", "FI", "PT", "GR",
    "CZ", "RO",
]  # fmt: skip
SUBDIVISIONS = {"US": ["US-CA", "US-NY", "US-TX"], "CN": ["CN-BJ", "CN-SH"], "DE": ["DE-BE"]}


def build_geoip(folder: Path, networks: int, rng: random.Random) -> tuple[Path, list[str]]:
    """A City database of random /24 networks; returns it and one address per network."""
    rows: list[CsvRow] = []
    addresses = []
    seen: set[int] = set()
    while len(rows) < networks:
        base = rng.randrange(1 << 24) << 8
        first = base >> 24
        if base in seen or first in (0, 10, 127) or first >= 224:
            continue
        seen.add(base)
        net = ipaddress.IPv4Network((base, 24))
        country = rng.choice(COUNTRIES)
        subdivision = rng.choice(SUBDIVISIONS[country]) if country in SUBDIVISIONS else None
        rows.append(CsvRow(net, country, subdivision))
        addresses.append(str(net[rng.randrange(1, 255)]))
    path = folder / "bench.mmdb"
    build_database(rows, path, build_epoch=1_704_067_200)
    return path, addresses


def make_restrictions(count: int, meetings: list[str], rng: random.Random) -> RestrictionSet:
    """``count`` restrictions: mostly exact meeting ids, some globs, two on every meeting."""
    items = []
    for i in range(count):
        roll = rng.random()
        scope: tuple[str, ...]
        if i < 2:
            scope = ("*",)
            regions = frozenset({"KP"})
        elif roll < 0.1:
            scope = (f"m-{rng.randrange(1000):03d}*",)
            regions = frozenset(rng.sample(COUNTRIES, 2))
        else:
            scope = tuple(rng.sample(meetings, 3))
            regions = frozenset(rng.sample(COUNTRIES, rng.randrange(1, 4)))
        mode = Mode.ALLOW if roll > 0.97 else Mode.BLOCK
        items.append(Restriction(
            id=f"r{i:05d}", mode=mode, regions=regions, meetings=scope,
            legal_basis="benchmark", authority="benchmark",
            starts_at=None if rng.random() < 0.8 else time.time() - 3600,
            ends_at=None if rng.random() < 0.8 else time.time() + 86400,
        ))
    return RestrictionSet(items, version=f"bench-{count}")


def percentile(sorted_ns: list[int], p: float) -> float:
    """The p-th percentile in microseconds."""
    index = min(len(sorted_ns) - 1, int(len(sorted_ns) * p / 100))
    return sorted_ns[index] / 1000


def measure(deciders: dict[int, Callable[[str, str], object]], samples: list[tuple[str, str]],
            block: int = 2_000) -> dict[int, dict[str, float]]:
    """Time each decision of every decider, alternating blocks; then a tight loop each."""
    times: dict[int, list[int]] = {key: [] for key in deciders}
    clock = time.perf_counter_ns
    for first in range(0, len(samples), block):
        chunk = samples[first:first + block]
        for key, decide in deciders.items():
            out = times[key]
            for peer, meeting in chunk:
                t0 = clock()
                decide(peer, meeting)
                out.append(clock() - t0)
    figures = {}
    for key, decide in deciders.items():
        start = time.perf_counter()
        for peer, meeting in samples:
            decide(peer, meeting)
        elapsed = time.perf_counter() - start
        ns = sorted(times[key])
        figures[key] = {
            "per_second": len(samples) / elapsed,
            "p50_us": percentile(ns, 50),
            "p99_us": percentile(ns, 99),
            "p999_us": percentile(ns, 99.9),
            "mean_us": statistics.fmean(ns) / 1000,
        }
    return figures


def measure_one(decide: Callable[[str, str], object], samples: list[tuple[str, str]],
                ) -> dict[str, float]:
    """Time each decision of one decider (no alternation)."""
    return measure({0: decide}, samples)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", type=int, default=20_000, help="networks in the database")
    parser.add_argument("--meetings", type=int, default=100_000, help="distinct meeting ids")
    parser.add_argument("--samples", type=int, default=200_000, help="decisions per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    for name in ("networks", "meetings", "samples", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, not {getattr(args, name)}")
    if args.meetings < 3:
        parser.error(f"--meetings must be at least 3 (a restriction names 3), not {args.meetings}")
    rng = random.Random(args.seed)
    meetings = [f"m-{i:05d}" for i in range(args.meetings)]
    with tempfile.TemporaryDirectory() as tmp:
        print(f"building a database of {args.networks} networks...", flush=True)
        db, addresses = build_geoip(Path(tmp), args.networks, rng)
        sets = {n: make_restrictions(n, meetings, rng) for n in (10, 10_000)}
        trusted = TrustedNetworks(())
        header = ForwardedHeader.X_FORWARDED_FOR
        resolvers = {
            "uncached": GeoResolver(GeoIPSettings(db, cache_size=0)),
            "cached": GeoResolver(GeoIPSettings(db, cache_size=65536)),
        }
        print(f"GeoIP reader: {resolvers['uncached'].reader_name}; gate parts: "
              f"{'C' if NATIVE else 'Python (C parts not built)'}")
        uncached_samples = [(rng.choice(addresses), rng.choice(meetings))
                            for _ in range(args.samples)]
        hot = rng.sample(addresses, min(1000, len(addresses)))
        cached_samples = [(rng.choice(hot), rng.choice(meetings)) for _ in range(args.samples)]
        now = time.time()

        def gate(rset: RestrictionSet, resolver: GeoResolver) -> Callable[[str, str], object]:
            def decide(peer: str, meeting: str) -> object:
                client = client_address(peer, (), trusted, header)
                location = resolver.resolve(client.address).location
                return rset.decide(meeting, location, client.address, now)

            return decide

        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        # (mode, percentile) -> each round's ratio of 10,000 to 10 restrictions
        ratios: dict[tuple[str, str], list[float]] = {}
        tune_gc()  # as `geogate serve` does after start-up
        modes = (("uncached", uncached_samples), ("cached", cached_samples))
        for mode, samples in modes:  # warm-up, untimed
            for rset in sets.values():
                decide = gate(rset, resolvers[mode])
                for peer, meeting in samples:
                    decide(peer, meeting)
        for round_no in range(args.rounds):
            for mode, samples in modes:
                figures = measure({count: gate(rset, resolvers[mode])
                                   for count, rset in sets.items()}, samples)
                for count, one in figures.items():
                    results.setdefault((mode, count), []).append(one)
                for p in ("p50", "p99"):
                    ratios.setdefault((mode, p), []).append(
                        figures[10_000][f"{p}_us"] / figures[10][f"{p}_us"])
            print(f"round {round_no + 1}/{args.rounds} done: uncached 10,000 vs 10 restrictions "
                  f"p50 {ratios['uncached', 'p50'][-1]:.2f}x, "
                  f"p99 {ratios['uncached', 'p99'][-1]:.2f}x", flush=True)
        # Where one uncached decision goes, part by part (10,000 restrictions).
        parts: dict[str, dict[str, float]] = {}
        resolver = resolvers["uncached"]
        clients = [client_address(peer, (), trusted, header).address
                   for peer, _ in uncached_samples]
        located = [resolver.resolve(a).location for a in clients]
        big = sets[10_000]
        parts["client address"] = measure_one(
            lambda peer, _m: client_address(peer, (), trusted, header), uncached_samples)
        by_peer = dict(zip((p for p, _ in uncached_samples), clients, strict=True))
        parts["GeoIP lookup"] = measure_one(
            lambda peer, _m: resolver.resolve(by_peer[peer]), uncached_samples)
        where = dict(zip((p for p, _ in uncached_samples), located, strict=True))
        parts["restriction check"] = measure_one(
            lambda peer, meeting: big.decide(meeting, where[peer], by_peer[peer], now),
            uncached_samples)
        for resolver in resolvers.values():
            resolver.close()

    def med(mode: str, count: int, key: str) -> float:
        return statistics.median(r[key] for r in results[(mode, count)])

    print()
    print(f"full gate decision (client address + GeoIP + restriction check), "
          f"{args.samples} decisions x {args.rounds} rounds, medians; "
          f"{args.meetings} meeting ids, {args.networks} networks")
    print(f"{'GeoIP':<9} {'restrictions':>12} {'decisions/s':>12} {'p50 us':>8} {'p99 us':>8} "
          f"{'p99.9 us':>9}")
    for mode in ("uncached", "cached"):
        for count in (10, 10_000):
            print(f"{mode:<9} {count:>12,} {med(mode, count, 'per_second'):>12,.0f} "
                  f"{med(mode, count, 'p50_us'):>8.2f} {med(mode, count, 'p99_us'):>8.2f} "
                  f"{med(mode, count, 'p999_us'):>9.2f}")
    print()
    print("one uncached decision with 10,000 restrictions, part by part (one round; each part "
          "timed alone, lookups of its inputs included)")
    for name, figures in parts.items():
        print(f"  {name:<18} p50 {figures['p50_us']:6.2f} us   p99 {figures['p99_us']:6.2f} us")
    p99 = med("uncached", 10_000, "p99_us")
    print()
    print(f"target p99 < 20 us uncached (10,000 restrictions): {p99:.2f} us -> "
          f"{'met' if p99 < 20 else 'NOT MET'}")
    for mode in ("uncached", "cached"):
        ratio = statistics.median(ratios[mode, "p50"])
        ratio99 = statistics.median(ratios[mode, "p99"])
        print(f"target 10,000 vs 10 restrictions <= 1.5x ({mode}; median of the rounds' ratios): "
              f"p50 {ratio:.2f}x, p99 {ratio99:.2f}x -> "
              f"{'met' if max(ratio, ratio99) <= 1.5 else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
