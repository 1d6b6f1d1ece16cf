"""Tests for proxy.geoip_build: CSV validation and MaxMind DB output read back with maxminddb."""

from __future__ import annotations

import itertools
import re
import tempfile
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address, IPv4Network, ip_network
from pathlib import Path
from typing import Any

import maxminddb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import GeoIPBuildError
from proxy.geoip_build import (
    ANONYMOUS_DATABASE_TYPE,
    CITY_DATABASE_TYPE,
    AnonymousFlag,
    AnonymousRow,
    CsvRow,
    build_anonymous_database,
    build_anonymous_from_csv,
    build_database,
    build_from_csv,
    read_csv,
)
from tests.helpers.geoip import BUILD_EPOCH, build_anonymous_db, build_db, write_csv

DEMO_CSV = Path(__file__).resolve().parent.parent / "config" / "demo" / "geoip.csv"

NESTED = [
    ("10.0.0.0/8", "US", ""),
    ("10.1.0.0/16", "US", "US-CA"),
    ("10.1.2.0/24", "DE", ""),
    ("10.1.2.128/25", "DE", "DE-BY"),
]


def lookup(db: Path, address: str) -> Any:
    """The record maxminddb's C reader returns for an address."""
    with maxminddb.open_database(db, maxminddb.MODE_MMAP_EXT) as reader:
        return reader.get(address)


def region(db: Path, address: str) -> str | None:
    """The record as a region code: "US", "US-CA", or None without a record."""
    record = lookup(db, address)
    if record is None:
        return None
    country = record["country"]["iso_code"]
    subdivisions = record.get("subdivisions")
    return f"{country}-{subdivisions[0]['iso_code']}" if subdivisions else country


@pytest.fixture
def csv_errors(tmp_path: Path) -> Iterator[Any]:
    """Build a CSV given as text and return the GeoIPBuildError message it raises."""

    def check(text: str, *, anonymous: bool = False) -> str:
        path = tmp_path / "bad.csv"
        path.write_text(text, encoding="utf-8")
        builder = build_anonymous_from_csv if anonymous else build_from_csv
        with pytest.raises(GeoIPBuildError) as caught:
            builder(path, tmp_path / "out.mmdb")
        assert not (tmp_path / "out.mmdb").exists()
        return str(caught.value)

    yield check


class TestMostSpecificWins:
    @pytest.mark.parametrize("order", list(itertools.permutations(range(len(NESTED)))))
    def test_any_row_order_gives_the_same_answers(
        self, tmp_path: Path, order: Sequence[int]
    ) -> None:
        """Nested networks answer by the most specific one whatever the row order."""
        db = build_db(tmp_path, [NESTED[i] for i in order])
        assert region(db, "10.200.0.1") == "US"
        assert region(db, "10.1.200.1") == "US-CA"
        assert region(db, "10.1.2.1") == "DE"
        assert region(db, "10.1.2.200") == "DE-BY"
        assert region(db, "11.0.0.1") is None

    def test_row_order_does_not_change_the_file(self, tmp_path: Path) -> None:
        """With a fixed build epoch, reversed rows produce a byte-identical database."""
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        first = build_db(tmp_path / "a", NESTED)
        second = build_db(tmp_path / "b", list(reversed(NESTED)))
        assert first.read_bytes() == second.read_bytes()

    @settings(max_examples=25)
    @given(
        st.lists(
            st.tuples(st.integers(0, 2**16 - 1), st.integers(8, 24)),
            min_size=1,
            max_size=12,
        ),
        st.lists(st.integers(0, 2**16 - 1), min_size=1, max_size=10),
    )
    def test_lookup_matches_brute_force_longest_prefix(
        self, specs: list[tuple[int, int]], probes: list[int]
    ) -> None:
        """Every lookup returns the row of the longest network containing the address."""
        networks: dict[IPv4Network, str] = {}
        countries = ["US", "DE", "FR", "JP", "BR"]
        for index, (offset, prefix) in enumerate(specs):
            base = int(IPv4Address("10.0.0.0")) + (offset << 8)
            network = IPv4Network((base, prefix), strict=False)
            networks.setdefault(network, countries[index % len(countries)])
        with tempfile.TemporaryDirectory() as directory:
            db = build_db(Path(directory), [(str(n), c) for n, c in networks.items()])
            for probe in probes:
                address = IPv4Address(int(IPv4Address("10.0.0.1")) + (probe << 8))
                containing = [n for n in networks if address in n]
                expected = (
                    networks[max(containing, key=lambda n: n.prefixlen)] if containing else None
                )
                assert region(db, str(address)) == expected


class TestLookupForms:
    def test_ipv4_ipv6_and_ipv4_mapped_lookups(self, tmp_path: Path) -> None:
        """IPv4 rows answer IPv4 and IPv4-mapped lookups; IPv6 rows answer IPv6."""
        db = build_db(tmp_path, [("192.0.2.0/24", "FR"), ("2001:db8::/32", "JP", "JP-13")])
        assert region(db, "192.0.2.7") == "FR"
        assert region(db, "::ffff:192.0.2.7") == "FR"
        assert region(db, "2001:db8::1") == "JP-13"
        assert region(db, "192.0.3.1") is None
        assert region(db, "::ffff:192.0.3.1") is None
        assert region(db, "2001:db9::1") is None

    def test_prefix_length_is_reported_per_address_family(self, tmp_path: Path) -> None:
        """The reader reports an IPv4 prefix for IPv4 lookups and an IPv6 one for mapped ones."""
        db = build_db(tmp_path, [("192.0.2.0/24", "FR")])
        with maxminddb.open_database(db, maxminddb.MODE_MMAP_EXT) as reader:
            assert reader.get_with_prefix_len("192.0.2.7")[1] == 24
            assert reader.get_with_prefix_len("::ffff:192.0.2.7")[1] == 120

    def test_mapped_row_is_the_ipv4_row_it_spells(self, tmp_path: Path) -> None:
        """A row written as ::ffff:a.b.c.d/n is stored as the IPv4 network a.b.c.d/(n-96)."""
        db = build_db(tmp_path, [("::ffff:198.51.100.0/120", "NL")])
        assert region(db, "198.51.100.9") == "NL"
        assert region(db, "::ffff:198.51.100.9") == "NL"

    def test_ipv6_supernet_answers_both_forms_alike(self, tmp_path: Path) -> None:
        """An IPv6 ::/0 row covers IPv4 too, and mapped lookups agree with IPv4 lookups."""
        db = build_db(tmp_path, [("::/0", "US"), ("10.0.0.0/8", "DE")])
        assert region(db, "2001:db8::1") == "US"
        assert region(db, "10.1.1.1") == region(db, "::ffff:10.1.1.1") == "DE"
        assert region(db, "8.8.8.8") == region(db, "::ffff:8.8.8.8") == "US"

    def test_ipv4_whole_space_row(self, tmp_path: Path) -> None:
        """0.0.0.0/0 covers every IPv4 address and no other IPv6 address."""
        db = build_db(tmp_path, [("0.0.0.0/0", "BR")])
        assert region(db, "203.0.113.1") == "BR"
        assert region(db, "::ffff:203.0.113.1") == "BR"
        assert region(db, "2001:db8::1") is None

    def test_iteration_lists_each_network_once(self, tmp_path: Path) -> None:
        """The IPv4-mapped alias is not listed twice when iterating the database."""
        db = build_db(tmp_path, [("192.0.2.0/24", "FR"), ("2001:db8::/32", "JP")])
        with maxminddb.open_database(db, maxminddb.MODE_MMAP_EXT) as reader:
            networks = sorted(str(network) for network, _ in reader)
        assert networks == ["192.0.2.0/24", "2001:db8::/32"]


class TestRecords:
    def test_city_record_is_shaped_like_maxmind(self, tmp_path: Path) -> None:
        """Subdivision iso_code holds the part after the dash, as in MaxMind City records."""
        db = build_db(tmp_path, [("192.0.2.0/24", "US", "US-CA")])
        assert lookup(db, "192.0.2.1") == {
            "country": {"iso_code": "US"},
            "subdivisions": [{"iso_code": "CA"}],
        }

    def test_record_without_subdivision_has_no_subdivisions_key(self, tmp_path: Path) -> None:
        """An empty subdivision column stores only the country."""
        db = build_db(tmp_path, [("192.0.2.0/24", "HK", "")])
        assert lookup(db, "192.0.2.1") == {"country": {"iso_code": "HK"}}

    @pytest.mark.parametrize("subdivision", ["US-CA", "CA", "us-ca", " ca "])
    def test_bare_and_full_subdivision_codes_store_alike(
        self, tmp_path: Path, subdivision: str
    ) -> None:
        """A bare "CA" is completed with the country; case and blanks do not matter."""
        db = build_db(tmp_path, [("192.0.2.0/24", "us", subdivision)])
        assert region(db, "192.0.2.1") == "US-CA"

    def test_metadata(self, tmp_path: Path) -> None:
        """The database is an IPv6 GeoIP2-City tree carrying the given build epoch."""
        db = build_db(tmp_path, NESTED, build_epoch=1_600_000_000)
        with maxminddb.open_database(db, maxminddb.MODE_MMAP_EXT) as reader:
            metadata = reader.metadata()
        assert metadata.database_type == CITY_DATABASE_TYPE
        assert metadata.ip_version == 6
        assert metadata.build_epoch == 1_600_000_000
        assert metadata.description == {"en": "geogate GeoIP City database from geoip.csv"}

    def test_anonymous_record_is_shaped_like_maxmind(self, tmp_path: Path) -> None:
        """Each flag sets its MaxMind key; is_anonymous is set; false flags are left out."""
        db = build_anonymous_db(
            tmp_path, [("192.0.2.0/24", "vpn|hosting"), ("2001:db8::/32", "tor")]
        )
        assert lookup(db, "192.0.2.1") == {
            "is_anonymous": True,
            "is_anonymous_vpn": True,
            "is_hosting_provider": True,
        }
        assert lookup(db, "::ffff:192.0.2.1") == lookup(db, "192.0.2.1")
        assert lookup(db, "2001:db8::1") == {"is_anonymous": True, "is_tor_exit_node": True}
        with maxminddb.open_database(db, maxminddb.MODE_MMAP_EXT) as reader:
            assert reader.metadata().database_type == ANONYMOUS_DATABASE_TYPE

    def test_every_anonymous_flag_has_its_key(self, tmp_path: Path) -> None:
        """All five flags map to the five MaxMind Anonymous-IP keys."""
        db = build_anonymous_db(tmp_path, [("192.0.2.0/24", "|".join(AnonymousFlag))])
        assert lookup(db, "192.0.2.1") == {
            "is_anonymous": True,
            "is_anonymous_vpn": True,
            "is_hosting_provider": True,
            "is_tor_exit_node": True,
            "is_public_proxy": True,
            "is_residential_proxy": True,
        }


class TestCsvFormat:
    def test_header_comments_and_blank_lines_are_allowed(self, tmp_path: Path) -> None:
        """A header, # comments and blank lines are skipped; two columns are enough."""
        path = tmp_path / "geo.csv"
        path.write_text(
            "\ufeff# comment\nnetwork,country,subdivision\n\n  # indented comment\n"
            "192.0.2.0/24,US,US-CA\n198.51.100.0/24,DE\n",
            encoding="utf-8",
        )
        rows = read_csv(path)
        assert [(str(r.network), r.country, r.subdivision, r.line) for r in rows] == [
            ("192.0.2.0/24", "US", "US-CA", 5),
            ("198.51.100.0/24", "DE", None, 6),
        ]
        assert build_from_csv(path, tmp_path / "geo.mmdb", BUILD_EPOCH) == 2

    def test_quoted_fields_are_read_as_csv(self, tmp_path: Path) -> None:
        """Fields may be quoted as a spreadsheet writes them."""
        path = tmp_path / "geo.csv"
        path.write_text('"192.0.2.0/24","US","CA"\n', encoding="utf-8")
        assert read_csv(path)[0].subdivision == "US-CA"

    def test_empty_csv_builds_an_empty_database(self, tmp_path: Path) -> None:
        """A CSV with no rows builds a database that answers nothing."""
        path = write_csv(tmp_path / "empty.csv", [], header=("network", "country", "subdivision"))
        out = tmp_path / "empty.mmdb"
        assert build_from_csv(path, out, BUILD_EPOCH) == 0
        assert region(out, "192.0.2.1") is None
        assert region(out, "2001:db8::1") is None

    def test_output_replaces_an_existing_file_by_rename(self, tmp_path: Path) -> None:
        """Rebuilding gives the database a new inode (a reader's mapping of the old one holds)."""
        db = build_db(tmp_path, [("192.0.2.0/24", "US")])
        before = db.stat().st_ino
        with maxminddb.open_database(db, maxminddb.MODE_MMAP_EXT) as reader:
            build_db(tmp_path, [("192.0.2.0/24", "DE")])
            assert reader.get("192.0.2.1") == {"country": {"iso_code": "US"}}
        assert db.stat().st_ino != before
        assert region(db, "192.0.2.1") == "DE"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["geoip.csv", "geoip.mmdb"]


class TestCsvErrors:
    @pytest.mark.parametrize(
        ("line", "value", "expected"),
        [
            ("192.0.2.0/33,US", "192.0.2.0/33", "CIDR"),
            ("not-a-network,US", "not-a-network", "CIDR"),
            ("192.0.2.1,US", "192.0.2.1", "CIDR"),
            ("192.0.2.1/24,US", "192.0.2.1/24", "192.0.2.0/24"),
            ("2001:db8::1/32,US", "2001:db8::1/32", "2001:db8::/32"),
            ("192.0.2.0/24,XX", "XX", "ISO 3166-1"),
            ("192.0.2.0/24,USA", "USA", "ISO 3166-1"),
            ("192.0.2.0/24,", "country is empty", "ISO 3166-1"),
            ("192.0.2.0/24,US,CN-BJ", "CN-BJ", "not to country US"),
            ("192.0.2.0/24,US,ZZ", "ZZ", "ISO 3166-2"),
            ("192.0.2.0/24", "192.0.2.0/24", "network,country,subdivision"),
            ("192.0.2.0/24,US,US-CA,extra", "extra", "network,country,subdivision"),
        ],
    )
    def test_bad_line_names_file_line_value_and_expectation(
        self, csv_errors: Any, tmp_path: Path, line: str, value: str, expected: str
    ) -> None:
        """Each bad-CSV case raises GeoIPBuildError naming file:line, the value, the expectation."""
        message = csv_errors(f"# header comment\n198.51.100.0/24,DE\n{line}\n")
        assert f"{tmp_path / 'bad.csv'}:3:" in message
        assert value in message
        assert expected in message
        assert ":2:" not in message

    def test_duplicate_network_names_both_lines(self, csv_errors: Any) -> None:
        """A network given twice is an error naming the repeat and the first line."""
        message = csv_errors("192.0.2.0/24,US\n198.51.100.0/24,DE\n192.0.2.0/24,FR\n")
        assert "bad.csv:3: network 192.0.2.0/24 duplicates line 1" in message

    def test_ipv4_mapped_spelling_of_a_row_is_a_duplicate(self, csv_errors: Any) -> None:
        """::ffff:192.0.2.0/120 is the same database network as 192.0.2.0/24."""
        message = csv_errors("192.0.2.0/24,US\n::ffff:192.0.2.0/120,FR\n")
        assert "bad.csv:2: network ::ffff:c000:200/120 duplicates line 1" in message

    def test_all_bad_lines_are_reported(self, csv_errors: Any) -> None:
        """Every bad line is listed, in line order, not only the first."""
        message = csv_errors(
            "network,country,subdivision\n"
            "10.0.0.1/8,US\n"
            "192.0.2.0/24,QQ\n"
            "198.51.100.0/24,DE,US-CA\n"
            "203.0.113.0/24,FR\n"
            "only-one-column\n"
            "10.0.0.0/8,US\n"
        )
        lines = message.splitlines()
        assert [line.split(":")[1] for line in lines] == ["2", "3", "4", "6"]
        assert "'10.0.0.1/8'" in lines[0]
        assert "'QQ'" in lines[1]
        assert "'DE-BY'" not in message and "'US-CA'" in lines[2]

    def test_every_bad_field_of_one_line_is_reported(self, csv_errors: Any) -> None:
        """A line with a bad network and a bad country names both."""
        message = csv_errors("10.0.0.1/8,QQ\n")
        assert "'10.0.0.1/8'" in message and "'QQ'" in message

    def test_unparseable_csv_line_is_reported(self, csv_errors: Any) -> None:
        """A line the csv module rejects (a stray quote) is reported with its line number."""
        message = csv_errors('192.0.2.0/24,US\n198.51.100.0/24,"D"E\n')
        assert "bad.csv:2: not a CSV line" in message

    def test_wrong_header_is_reported(self, csv_errors: Any) -> None:
        """A header line must name the expected columns."""
        message = csv_errors("network,region\n192.0.2.0/24,US\n")
        assert "bad.csv:1: header 'network,region'" in message

    @pytest.mark.parametrize(
        ("flags", "value"),
        [("vpn|darknet", "darknet"), ("", "flags are empty"), ("vpn,tor", "3 columns")],
    )
    def test_bad_anonymous_flags(self, csv_errors: Any, flags: str, value: str) -> None:
        """Unknown or missing flags name the line, the value and the expected flags."""
        message = csv_errors(f"network,flags\n192.0.2.0/24,{flags}\n", anonymous=True)
        assert "bad.csv:2:" in message
        assert value in message
        assert "residential_proxy" in message or "network,flags" in message

    def test_unreadable_csv_names_the_file(self, tmp_path: Path) -> None:
        """A missing CSV raises GeoIPBuildError naming it."""
        with pytest.raises(GeoIPBuildError, match=re.escape("missing.csv")):
            build_from_csv(tmp_path / "missing.csv", tmp_path / "out.mmdb")

    def test_unwritable_output_names_the_file(self, tmp_path: Path) -> None:
        """An output in a missing directory raises GeoIPBuildError naming it."""
        path = write_csv(tmp_path / "geo.csv", [("192.0.2.0/24", "US")])
        with pytest.raises(GeoIPBuildError, match="no-such-dir"):
            build_from_csv(path, tmp_path / "no-such-dir" / "out.mmdb")

    @pytest.mark.parametrize("epoch", [-1, 2**64, True])
    def test_bad_build_epoch_is_rejected(self, tmp_path: Path, epoch: int) -> None:
        """build_epoch must be an unsigned 64-bit integer."""
        with pytest.raises(ValueError, match="build_epoch"):
            build_database([], tmp_path / "out.mmdb", build_epoch=epoch)


class TestRows:
    def test_rows_build_like_csv(self, tmp_path: Path) -> None:
        """build_database takes validated rows as well as a CSV path."""
        rows = [
            CsvRow(ip_network("10.0.0.0/8"), "US"),
            CsvRow(ip_network("10.1.0.0/16"), "US", "CA"),
        ]
        out = tmp_path / "rows.mmdb"
        assert build_database(rows, out, description="rows", build_epoch=BUILD_EPOCH) == 2
        assert region(out, "10.1.0.1") == "US-CA"
        assert region(out, "10.2.0.1") == "US"

    def test_row_validates_codes(self) -> None:
        """CsvRow rejects an unknown country and a subdivision of another country."""
        with pytest.raises(ValueError, match="'XX'"):
            CsvRow(ip_network("10.0.0.0/8"), "XX")
        with pytest.raises(ValueError, match="belongs to CN"):
            CsvRow(ip_network("10.0.0.0/8"), "US", "CN-BJ")

    def test_duplicate_rows_are_rejected(self, tmp_path: Path) -> None:
        """Duplicate networks among rows raise GeoIPBuildError naming both rows."""
        rows = [CsvRow(ip_network("10.0.0.0/8"), "US"), CsvRow(ip_network("10.0.0.0/8"), "DE")]
        expected = re.escape("row 2: network 10.0.0.0/8 duplicates row 1")
        with pytest.raises(GeoIPBuildError, match=expected):
            build_database(rows, tmp_path / "out.mmdb")

    def test_rows_of_the_wrong_kind_are_rejected(self, tmp_path: Path) -> None:
        """A City build refuses anonymous rows."""
        rows = [AnonymousRow(ip_network("10.0.0.0/8"), frozenset({AnonymousFlag.TOR}))]
        with pytest.raises(GeoIPBuildError, match="not a CsvRow"):
            build_database(rows, tmp_path / "out.mmdb")  # type: ignore[arg-type]

    def test_anonymous_rows_build(self, tmp_path: Path) -> None:
        """build_anonymous_database takes validated rows."""
        rows = [AnonymousRow(ip_network("10.0.0.0/8"), frozenset({AnonymousFlag.TOR}))]
        out = tmp_path / "anon.mmdb"
        assert build_anonymous_database(rows, out, build_epoch=BUILD_EPOCH) == 1
        assert lookup(out, "10.0.0.1") == {"is_anonymous": True, "is_tor_exit_node": True}

    def test_anonymous_row_needs_a_flag(self) -> None:
        """An AnonymousRow without flags is rejected."""
        with pytest.raises(ValueError, match="no flags"):
            AnonymousRow(ip_network("10.0.0.0/8"), frozenset())


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo database, built once for the module."""
    out = tmp_path_factory.mktemp("demo") / "demo-geoip.mmdb"
    build_from_csv(DEMO_CSV, out, BUILD_EPOCH)
    return out


class TestDemoCsv:
    @pytest.mark.parametrize(
        ("address", "expected"),
        [
            ("127.0.1.200", "CN-BJ"),
            ("127.0.1.5", "CN"),
            ("127.0.2.5", "HK"),
            ("127.0.3.5", "US"),
            ("127.0.3.200", "US-CA"),
            ("127.0.4.1", "TW"),
            ("127.0.5.1", "DE"),
            ("127.0.6.1", "RU"),
            ("127.0.7.1", "GB"),
            ("127.0.8.1", "FR"),
            ("127.0.9.1", "MO"),
            ("127.0.10.1", "IR"),
            ("127.0.11.1", "BR"),
            ("::1", "US-NY"),
            ("127.0.0.1", None),
            ("127.0.12.1", None),
        ],
    )
    def test_demo_regions(self, demo_db: Path, address: str, expected: str | None) -> None:
        """The demo map places each loopback /24 in its region and leaves 127.0.0.1 unknown."""
        assert region(demo_db, address) == expected
