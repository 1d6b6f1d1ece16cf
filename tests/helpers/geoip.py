"""Build small GeoIP databases for tests, through the real CSV builder.

Usage::

    db = build_db(tmp_path, [("192.0.2.0/24", "US", "US-CA"), ("2001:db8::/32", "DE")])
    resolver = GeoResolver(GeoIPSettings(db))

Rows are ``(network, country[, subdivision])`` tuples for City databases and
``(network, "vpn|tor")`` tuples for Anonymous-IP databases.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

from proxy.geoip_build import build_anonymous_from_csv, build_from_csv

__all__ = ["BUILD_EPOCH", "build_anonymous_db", "build_db", "write_csv"]

# A fixed build time keeps test databases reproducible (2024-01-01T00:00:00Z).
BUILD_EPOCH = 1_704_067_200


def write_csv(
    path: Path, rows: Iterable[Sequence[str]], *, header: Sequence[str] | None = None
) -> Path:
    """Write rows as a CSV file.

    Args:
        path: the file to write.
        rows: rows of text fields.
        header: an optional first line, such as ``("network", "country", "subdivision")``.

    Returns:
        ``path``.
    """
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        if header is not None:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def build_db(
    tmp_path: Path,
    rows: Iterable[Sequence[str]],
    *,
    name: str = "geoip",
    build_epoch: int = BUILD_EPOCH,
) -> Path:
    """Build a City database from ``(network, country[, subdivision])`` rows.

    Args:
        tmp_path: the directory for the CSV and the database.
        rows: the rows; the most specific network wins whatever their order.
        name: the file stem, so one test can build several databases.
        build_epoch: the metadata build time.

    Returns:
        The path of the ``.mmdb`` file.
    """
    csv_path = write_csv(tmp_path / f"{name}.csv", rows)
    out = tmp_path / f"{name}.mmdb"
    build_from_csv(csv_path, out, build_epoch=build_epoch)
    return out


def build_anonymous_db(
    tmp_path: Path,
    rows: Iterable[Sequence[str]],
    *,
    name: str = "anonymous",
    build_epoch: int = BUILD_EPOCH,
) -> Path:
    """Build an Anonymous-IP database from (network, flags) rows such as ``("10.0.0.0/8", "tor")``.

    Args:
        tmp_path: the directory for the CSV and the database.
        rows: the rows; flags are a ``|``-list of vpn, hosting, tor, public_proxy,
            residential_proxy.
        name: the file stem.
        build_epoch: the metadata build time.

    Returns:
        The path of the ``.mmdb`` file.
    """
    csv_path = write_csv(tmp_path / f"{name}.csv", rows)
    out = tmp_path / f"{name}.mmdb"
    build_anonymous_from_csv(csv_path, out, build_epoch=build_epoch)
    return out
