"""Tests for proxy.geo: client address behind trusted proxies, and GeoIP resolution."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from proxy.errors import AddressError, GeoIPError
from proxy.geo import (
    ClientAddress,
    ForwardedHeader,
    GeoIPSettings,
    GeoResolver,
    GeoResult,
    ReloadResult,
    Resolution,
    TrustedNetworks,
    client_address,
    parse_address,
)
from proxy.policy.regions import UNKNOWN, Location
from tests.helpers.geoip import BUILD_EPOCH, build_anonymous_db, build_db

XFF = ForwardedHeader.X_FORWARDED_FOR
FWD = ForwardedHeader.FORWARDED
PROXIES = TrustedNetworks((ip_network("10.0.0.0/8"), ip_network("2001:db8:ffff::/48")))


def addr(text: str) -> IPv4Address | IPv6Address:
    """Shorthand for ipaddress.ip_address."""
    return ip_address(text)


# --- client address ----------------------------------------------------------------------------


class TestUntrustedPeer:
    def test_spoofed_header_is_ignored(self) -> None:
        """A header from an untrusted peer never moves the participant."""
        client = client_address("203.0.113.5", ["198.51.100.1"], PROXIES, XFF)
        assert client == ClientAddress(addr("203.0.113.5"), "peer", "203.0.113.5")

    def test_spoofed_forwarded_is_ignored(self) -> None:
        """A Forwarded header from an untrusted peer is ignored as well."""
        client = client_address("203.0.113.5", ["for=198.51.100.1"], PROXIES, FWD)
        assert client.address == addr("203.0.113.5") and client.via == "peer"

    def test_no_trusted_networks_means_peer(self) -> None:
        """With no trusted proxies the peer is always the client."""
        client = client_address("10.0.0.1", ["198.51.100.1"], TrustedNetworks(), XFF)
        assert client.address == addr("10.0.0.1") and client.via == "peer"

    def test_ipv4_mapped_peer_is_ipv4(self) -> None:
        """A dual-stack socket's ::ffff:a.b.c.d peer is the IPv4 client a.b.c.d."""
        client = client_address("::ffff:203.0.113.5", [], PROXIES, XFF)
        assert client.address == IPv4Address("203.0.113.5")
        assert client.peer == "::ffff:203.0.113.5"

    def test_ipv6_peer(self) -> None:
        """An IPv6 peer is kept as IPv6."""
        client = client_address("2001:db8::5", ["198.51.100.1"], PROXIES, XFF)
        assert client.address == IPv6Address("2001:db8::5") and client.via == "peer"

    def test_zone_id_is_stripped(self) -> None:
        """A link-local peer's zone id is dropped."""
        client = client_address("fe80::1%eth0", [], PROXIES, XFF)
        assert client.address == IPv6Address("fe80::1")
        assert str(client.address) == "fe80::1"

    @pytest.mark.parametrize("peer", ["", "localhost", "1.2.3", "01.2.3.4", "1.2.3.4%eth0", "::g"])
    def test_bad_peer_raises_address_error(self, peer: str) -> None:
        """A peer that is not an address raises AddressError naming it."""
        with pytest.raises(AddressError, match=re.escape(repr(peer))):
            client_address(peer, [], PROXIES, XFF)


class TestXForwardedFor:
    def test_trusted_peer_header_names_the_client(self) -> None:
        """Behind a trusted proxy the header's address is the client."""
        client = client_address("10.0.0.1", ["203.0.113.7"], PROXIES, XFF)
        assert client == ClientAddress(addr("203.0.113.7"), "x-forwarded-for", "10.0.0.1")

    def test_walk_stops_at_first_untrusted_from_the_right(self) -> None:
        """Trusted hops are skipped; addresses left of the first untrusted one are not believed."""
        client = client_address(
            "10.0.0.1", ["198.51.100.66, 203.0.113.9, 10.0.0.3, 10.9.9.9"], PROXIES, XFF
        )
        assert client.address == addr("203.0.113.9")

    def test_several_header_lines_form_one_list(self) -> None:
        """Values of repeated header lines join in order."""
        client = client_address("10.0.0.1", ["203.0.113.9", "10.0.0.3"], PROXIES, XFF)
        assert client.address == addr("203.0.113.9")

    def test_all_trusted_takes_the_leftmost(self) -> None:
        """When every address is trusted the leftmost one is the client."""
        client = client_address("10.0.0.1", ["10.1.1.1, 10.2.2.2"], PROXIES, XFF)
        assert client.address == addr("10.1.1.1") and client.via == "x-forwarded-for"

    def test_malformed_entry_stops_the_walk_at_the_hop_that_sent_it(self) -> None:
        """A malformed entry stops the walk; the trusted hop right of it is the client."""
        client = client_address("10.0.0.1", ["203.0.113.9, bogus, 10.0.0.3"], PROXIES, XFF)
        assert client.address == addr("10.0.0.3") and client.via == "x-forwarded-for"

    @pytest.mark.parametrize("value", ["bogus", "unknown", "203.0.113.9 10.0.0.2", "1.2.3.4:99999"])
    def test_malformed_last_entry_leaves_the_peer(self, value: str) -> None:
        """A malformed rightmost entry leaves the trusted peer as the client."""
        client = client_address("10.0.0.1", [value], PROXIES, XFF)
        assert client.address == addr("10.0.0.1") and client.via == "peer"

    def test_empty_list_elements_are_ignored(self) -> None:
        """Empty list elements are skipped (RFC 9110 section 5.6.1)."""
        client = client_address("10.0.0.1", [" , 203.0.113.9,, 10.0.0.3 ,"], PROXIES, XFF)
        assert client.address == addr("203.0.113.9")

    @pytest.mark.parametrize(
        ("entry", "expected"),
        [
            ("203.0.113.9:5555", "203.0.113.9"),
            ("[2001:db8::9]:443", "2001:db8::9"),
            ("2001:db8::9", "2001:db8::9"),
            ("::ffff:203.0.113.9", "203.0.113.9"),
            ("[fe80::9%25eth0]", "fe80::9"),
        ],
    )
    def test_ports_brackets_and_mapped_forms(self, entry: str, expected: str) -> None:
        """Ports and brackets are stripped; IPv4-mapped entries become IPv4."""
        client = client_address("10.0.0.1", [entry], PROXIES, XFF)
        assert client.address == addr(expected)

    def test_trusted_ipv6_hop(self) -> None:
        """An IPv6 trusted hop is walked past like an IPv4 one."""
        client = client_address("10.0.0.1", ["203.0.113.9, 2001:db8:ffff::1"], PROXIES, XFF)
        assert client.address == addr("203.0.113.9")

    def test_header_none_ignores_values(self) -> None:
        """With header NONE a trusted peer is still the client."""
        client = client_address("10.0.0.1", ["203.0.113.9"], PROXIES, ForwardedHeader.NONE)
        assert client.address == addr("10.0.0.1") and client.via == "peer"

    def test_no_header_values(self) -> None:
        """A trusted peer without the header is the client."""
        client = client_address("10.0.0.1", [], PROXIES, XFF)
        assert client.address == addr("10.0.0.1") and client.via == "peer"


class TestForwarded:
    @pytest.mark.parametrize(
        ("values", "expected"),
        [
            (["for=192.0.2.60;proto=http;by=203.0.113.43"], "192.0.2.60"),
            (['for="[2001:db8:cafe::17]:4711"'], "2001:db8:cafe::17"),
            (['For="[2001:db8:cafe::17]"'], "2001:db8:cafe::17"),
            (['for="192.0.2.43:47011"'], "192.0.2.43"),
            (["for=192.0.2.43, for=198.51.100.17"], "198.51.100.17"),
            (["for=192.0.2.43", "for=198.51.100.17;by=10.0.0.1"], "198.51.100.17"),
            (["for=192.0.2.43, for=10.0.0.5"], "192.0.2.43"),
            (['proto=https;host="a,b";for=192.0.2.9'], "192.0.2.9"),
            (['for="\\192.0.2.9"'], "192.0.2.9"),
            (["  for = 192.0.2.9 ;"], "192.0.2.9"),
        ],
    )
    def test_for_parameter_forms(self, values: list[str], expected: str) -> None:
        """The for= parameter is read in its token, quoted, bracketed and ported forms."""
        client = client_address("10.0.0.1", values, PROXIES, FWD)
        assert client.address == addr(expected) and client.via == "forwarded"

    @pytest.mark.parametrize(
        "value",
        [
            "for=unknown",
            'for="_gazonk"',
            "for=_hidden",
            "proto=https",
            "for=192.0.2.9;for=192.0.2.10",
            'for="192.0.2.9',
            "for",
            "for=[2001:db8::1",
        ],
    )
    def test_unusable_element_stops_the_walk(self, value: str) -> None:
        """Unknown, obfuscated, missing, repeated or malformed for= stops at the trusted hop."""
        client = client_address("10.0.0.1", [f"for=203.0.113.1, {value}"], PROXIES, FWD)
        assert client.address == addr("10.0.0.1") and client.via == "peer"

    def test_obfuscated_left_of_a_trusted_hop(self) -> None:
        """An obfuscated client behind a trusted hop leaves that hop as the client."""
        client = client_address("10.0.0.1", ["for=_abc, for=10.0.0.7"], PROXIES, FWD)
        assert client.address == addr("10.0.0.7") and client.via == "forwarded"

    def test_xff_values_under_forwarded_are_malformed(self) -> None:
        """A bare address list is not an RFC 7239 value: the trusted peer is the client."""
        client = client_address("10.0.0.1", ["203.0.113.9"], PROXIES, FWD)
        assert client.address == addr("10.0.0.1")


class TestTrustedNetworks:
    def test_contains_by_prefix(self) -> None:
        """Membership honours each network's prefix length, per address family."""
        trusted = TrustedNetworks(
            (ip_network("10.0.0.0/8"), ip_network("192.0.2.128/25"), ip_network("::1/128"))
        )
        assert trusted.contains(addr("10.255.0.1"))
        assert trusted.contains(addr("192.0.2.200"))
        assert not trusted.contains(addr("192.0.2.100"))
        assert trusted.contains(addr("::1"))
        assert not trusted.contains(addr("::2"))
        assert not trusted.contains(addr("11.0.0.1"))

    def test_mapped_forms_are_ipv4(self) -> None:
        """An IPv4-mapped network is stored as IPv4, and a mapped address matches IPv4."""
        trusted = TrustedNetworks((ip_network("::ffff:10.0.0.0/104"),))
        assert trusted.networks == (ip_network("10.0.0.0/8"),)
        assert trusted.contains(addr("10.1.2.3"))
        assert trusted.contains(addr("::ffff:10.1.2.3"))

    def test_empty(self) -> None:
        """An empty set trusts nothing and is falsy."""
        assert not TrustedNetworks().contains(addr("127.0.0.1"))
        assert not TrustedNetworks() and len(PROXIES) == 2

    def test_parse(self) -> None:
        """parse builds from text and rejects a non-network, naming it."""
        trusted = TrustedNetworks.parse(["10.0.0.0/8", " ::1 "])
        assert trusted.contains(addr("::1")) and trusted.contains(addr("10.0.0.1"))
        with pytest.raises(AddressError, match=re.escape("'10.0.0.1/8'")):
            TrustedNetworks.parse(["10.0.0.1/8"])

    def test_rejects_non_networks(self) -> None:
        """Items must be network objects."""
        with pytest.raises(ValueError, match="not an IPv4 or IPv6 network"):
            TrustedNetworks(("10.0.0.0/8",))  # type: ignore[arg-type]

    @given(
        st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=8),
        st.integers(0, 2**32 - 1),
    )
    def test_contains_agrees_with_ipaddress(
        self, specs: list[tuple[int, int]], probe: int
    ) -> None:
        """contains answers as ipaddress containment over the list does."""
        networks = tuple(ip_network((value, length), strict=False) for value, length in specs)
        address = IPv4Address(probe)
        expected = any(address in network for network in networks)
        assert TrustedNetworks(networks).contains(address) is expected


class TestParseAndValidate:
    def test_parse_address_forms(self) -> None:
        """parse_address takes ports, brackets, zone ids and mapped forms."""
        assert parse_address("[::1]:80") == addr("::1")
        assert parse_address("192.0.2.1:80") == addr("192.0.2.1")
        assert parse_address("::ffff:192.0.2.1") == addr("192.0.2.1")
        assert parse_address(" 192.0.2.1 ") == addr("192.0.2.1")

    def test_client_address_validates_via(self) -> None:
        """ClientAddress.via is "peer" or a header name."""
        with pytest.raises(ValueError, match="x-real-ip"):
            ClientAddress(addr("192.0.2.1"), "x-real-ip", "192.0.2.1")


# --- resolver ----------------------------------------------------------------------------------

ROWS = [
    ("81.2.69.0/24", "US", "US-CA"),
    ("89.160.20.0/24", "DE"),
    ("2a02:cf40::/32", "JP", "JP-13"),
    ("127.0.1.0/24", "CN", "CN-BJ"),
    ("10.0.0.0/8", "FR"),
]


@pytest.fixture
def resolvers() -> Iterator[Any]:
    """Open resolvers and close them after the test."""
    opened: list[GeoResolver] = []

    def make(database: Path, **kwargs: Any) -> GeoResolver:
        resolver = GeoResolver(GeoIPSettings(database, **kwargs))
        opened.append(resolver)
        return resolver

    yield make
    for resolver in opened:
        resolver.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A City database of ROWS."""
    return build_db(tmp_path, ROWS)


def replace_file(path: Path, data: bytes) -> None:
    """Replace a file by rename, as geoipupdate does (a mapped reader keeps the old inode)."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class TestResolve:
    def test_database_answer(self, db: Path, resolvers: Any) -> None:
        """A mapped address resolves to its country and subdivision with the matched network."""
        resolver = resolvers(db)
        assert resolver.resolve(addr("81.2.69.77")) == GeoResult(
            Location("US", "US-CA"), Resolution.DATABASE, "81.2.69.0/24"
        )
        assert resolver.resolve(addr("2a02:cf40::1")) == GeoResult(
            Location("JP", "JP-13"), Resolution.DATABASE, "2a02:cf40::/32"
        )
        assert resolver.resolve(addr("89.160.20.1")).location == Location("DE", None)

    def test_ipv4_mapped_address_resolves_as_ipv4(self, db: Path, resolvers: Any) -> None:
        """::ffff:a.b.c.d gets the answer of a.b.c.d."""
        result = resolvers(db).resolve(addr("::ffff:81.2.69.77"))
        assert result.location == Location("US", "US-CA")
        assert result.network == "81.2.69.0/24"

    def test_no_record_is_unknown(self, db: Path, resolvers: Any) -> None:
        """An unmapped public address is UNKNOWN with how=NO_RECORD and is counted."""
        resolver = resolvers(db)
        assert resolver.resolve(addr("175.16.199.1")) == GeoResult(
            UNKNOWN, Resolution.NO_RECORD, None
        )
        assert resolver.resolve(addr("2a03::1")).how is Resolution.NO_RECORD
        assert resolver.no_record == 2
        assert resolver.errors == 0

    def test_overrides_beat_the_database(self, db: Path, resolvers: Any) -> None:
        """An override answers ahead of the database; the most specific override wins."""
        resolver = resolvers(
            db,
            overrides=(
                (ip_network("81.2.69.0/25"), Location("GB", None)),
                (ip_network("81.2.69.0/28"), Location("GB", "GB-SCT")),
                (ip_network("2a02:cf40:1::/48"), Location("NL", None)),
            ),
        )
        assert resolver.resolve(addr("81.2.69.5")) == GeoResult(
            Location("GB", "GB-SCT"), Resolution.OVERRIDE, "81.2.69.0/28"
        )
        assert resolver.resolve(addr("81.2.69.100")).location == Location("GB", None)
        assert resolver.resolve(addr("81.2.69.200")).how is Resolution.DATABASE
        assert resolver.resolve(addr("2a02:cf40:1::1")).location == Location("NL", None)
        assert resolver.resolve(addr("2a02:cf40:2::1")).location == Location("JP", "JP-13")

    def test_override_covers_private_addresses(self, db: Path, resolvers: Any) -> None:
        """Overrides apply to private addresses even when they are not looked up."""
        resolver = resolvers(db, overrides=((ip_network("10.1.0.0/16"), Location("IE", None)),))
        assert resolver.resolve(addr("10.1.2.3")).how is Resolution.OVERRIDE
        assert resolver.resolve(addr("10.2.2.3")).how is Resolution.PRIVATE

    @pytest.mark.parametrize(
        "address",
        ["127.0.1.1", "10.1.1.1", "192.168.1.1", "169.254.1.1", "::1", "fe80::1", "fd00::1"],
    )
    def test_private_addresses_are_unknown_by_default(
        self, db: Path, resolvers: Any, address: str
    ) -> None:
        """Private, loopback and link-local addresses answer UNKNOWN/PRIVATE unasked."""
        resolver = resolvers(db)
        assert resolver.resolve(addr(address)) == GeoResult(UNKNOWN, Resolution.PRIVATE, None)
        assert resolver.no_record == 0

    def test_private_addresses_are_looked_up_when_asked(self, db: Path, resolvers: Any) -> None:
        """With lookup_private the database answers for loopback and private ranges."""
        resolver = resolvers(db, lookup_private=True)
        assert resolver.resolve(addr("127.0.1.1")).location == Location("CN", "CN-BJ")
        assert resolver.resolve(addr("10.1.1.1")).location == Location("FR", None)
        assert resolver.resolve(addr("127.0.0.1")).how is Resolution.NO_RECORD

    def test_anonymous_database_flags(self, tmp_path: Path, db: Path, resolvers: Any) -> None:
        """Addresses in the anonymous database resolve with location.anonymous set."""
        anonymous = build_anonymous_db(
            tmp_path, [("81.2.69.128/25", "vpn"), ("175.16.199.0/24", "tor|hosting")]
        )
        resolver = resolvers(db, anonymous_database=anonymous)
        assert resolver.resolve(addr("81.2.69.200")).location == Location("US", "US-CA", True)
        assert resolver.resolve(addr("81.2.69.1")).location == Location("US", "US-CA", False)
        unknown = resolver.resolve(addr("175.16.199.1"))
        assert unknown.location == Location(None, None, True)
        assert unknown.how is Resolution.NO_RECORD
        assert resolver.anonymous_build_epoch == BUILD_EPOCH

    def test_cache_hits_are_counted(self, db: Path, resolvers: Any) -> None:
        """A repeated address is answered from the cache with the same result object."""
        resolver = resolvers(db)
        first = resolver.resolve(addr("81.2.69.1"))
        again = resolver.resolve(addr("81.2.69.1"))
        assert again is first
        assert (resolver.lookups, resolver.cache_hits) == (2, 1)
        resolver.resolve(addr("81.2.69.2"))
        assert (resolver.lookups, resolver.cache_hits) == (3, 1)

    def test_cache_evicts_oldest_first(self, db: Path, resolvers: Any) -> None:
        """A full cache drops the oldest address first."""
        resolver = resolvers(db, cache_size=2)
        for text in ("81.2.69.1", "81.2.69.2", "81.2.69.3"):
            resolver.resolve(addr(text))
        resolver.resolve(addr("81.2.69.3"))
        assert resolver.cache_hits == 1
        resolver.resolve(addr("81.2.69.1"))
        assert resolver.cache_hits == 1

    def test_cache_size_zero_disables_the_cache(self, db: Path, resolvers: Any) -> None:
        """With cache_size 0 every lookup asks again."""
        resolver = resolvers(db, cache_size=0)
        resolver.resolve(addr("81.2.69.1"))
        resolver.resolve(addr("81.2.69.1"))
        assert (resolver.lookups, resolver.cache_hits) == (2, 0)

    def test_ipv4_and_ipv6_cache_keys_do_not_collide(self, db: Path, resolvers: Any) -> None:
        """10.0.0.1 and ::a00:1 (the same integer) are different cache entries."""
        resolver = resolvers(
            db, lookup_private=True, overrides=((ip_network("::a00:0/120"), Location("NL")),)
        )
        assert resolver.resolve(addr("10.0.0.1")).location == Location("FR")
        assert resolver.resolve(addr("::a00:1")).location == Location("NL")
        assert resolver.cache_hits == 0

    def test_metadata_properties(self, db: Path, resolvers: Any) -> None:
        """The resolver reports build epoch, type and whether the C reader is in use."""
        resolver = resolvers(db)
        assert resolver.build_epoch == BUILD_EPOCH
        assert resolver.database_type == "GeoIP2-City"
        assert resolver.anonymous_build_epoch is None
        assert resolver.extension_in_use is True
        assert resolver.reader_name == "maxminddb-rust"  # a dependency: installed everywhere

    def test_lookup_after_close_is_an_uncached_error(self, db: Path) -> None:
        """A failing database answers unknown, counts an error and caches nothing."""
        resolver = GeoResolver(GeoIPSettings(db))
        resolver.close()
        resolver.close()
        for _ in range(2):
            assert resolver.resolve(addr("81.2.69.1")) == GeoResult(
                UNKNOWN, Resolution.NO_RECORD, None
            )
        assert (resolver.errors, resolver.cache_hits) == (2, 0)


class TestMaxMindShapes:
    """Records written directly with mmdb_writer, shaped like MaxMind's own files."""

    def write(self, path: Path, records: dict[str, Any], ip_version: int = 6) -> Path:
        writer = MMDBWriter(
            ip_version=ip_version, ipv4_compatible=ip_version == 6, database_type="GeoIP2-City"
        )
        for network, record in records.items():
            writer.insert_network(IPSet([network]), record)
        writer.to_db_file(str(path))
        return path

    def test_registered_country_is_the_fallback(self, tmp_path: Path, resolvers: Any) -> None:
        """Without country, registered_country gives the location (as MaxMind readers do)."""
        db = self.write(
            tmp_path / "m.mmdb",
            {"81.2.69.0/24": {"registered_country": {"iso_code": "DE"}}},
        )
        assert resolvers(db).resolve(addr("81.2.69.1")).location == Location("DE", None)

    def test_first_subdivision_and_full_codes(self, tmp_path: Path, resolvers: Any) -> None:
        """The first (largest) subdivision is used; a full ISO 3166-2 code is accepted too."""
        db = self.write(
            tmp_path / "m.mmdb",
            {
                "81.2.69.0/24": {
                    "country": {"iso_code": "ES"},
                    "subdivisions": [{"iso_code": "CT"}, {"iso_code": "B"}],
                },
                "89.160.20.0/24": {
                    "country": {"iso_code": "US"},
                    "subdivisions": [{"iso_code": "US-TX"}],
                },
            },
        )
        resolver = resolvers(db)
        assert resolver.resolve(addr("81.2.69.1")).location == Location("ES", "ES-CT")
        assert resolver.resolve(addr("89.160.20.1")).location == Location("US", "US-TX")

    def test_bad_codes_degrade_and_count_errors(self, tmp_path: Path, resolvers: Any) -> None:
        """A record whose codes cannot form a Location keeps what is usable and counts an error."""
        db = self.write(
            tmp_path / "m.mmdb",
            {
                "81.2.69.0/24": {"country": {"iso_code": "usa"}},
                "89.160.20.0/24": {"country": {"iso_code": "US"}, "subdivisions": "CA"},
                "175.16.199.0/24": {"city": {"names": {"en": "Nowhere"}}},
            },
        )
        resolver = resolvers(db)
        assert resolver.resolve(addr("81.2.69.1")).location == UNKNOWN
        assert resolver.errors == 1
        assert resolver.resolve(addr("89.160.20.1")).location == Location("US", None)
        no_country = resolver.resolve(addr("175.16.199.1"))
        assert no_country.how is Resolution.NO_RECORD
        assert no_country.network == "175.16.199.0/24"

    def test_ipv4_only_database(self, tmp_path: Path, resolvers: Any) -> None:
        """An IPv4-only database answers IPv6 addresses with no record, not an error."""
        db = self.write(
            tmp_path / "v4.mmdb", {"81.2.69.0/24": {"country": {"iso_code": "FR"}}}, ip_version=4
        )
        resolver = resolvers(db)
        assert resolver.resolve(addr("81.2.69.1")).location == Location("FR", None)
        assert resolver.resolve(addr("2a02:cf40::1")).how is Resolution.NO_RECORD
        assert resolver.errors == 0


class TestOpenAndReload:
    def test_missing_database_raises_naming_the_file(self, tmp_path: Path) -> None:
        """A database that cannot be opened raises GeoIPError naming it."""
        with pytest.raises(GeoIPError, match=re.escape("missing.mmdb")):
            GeoResolver(GeoIPSettings(tmp_path / "missing.mmdb"))

    def test_corrupt_database_raises_naming_the_file(self, tmp_path: Path) -> None:
        """A file that is not a MaxMind DB raises GeoIPError naming it."""
        path = tmp_path / "garbage.mmdb"
        path.write_bytes(b"not a database" * 100)
        with pytest.raises(GeoIPError, match=re.escape("garbage.mmdb")):
            GeoResolver(GeoIPSettings(path))

    def test_missing_anonymous_database_raises(self, db: Path, tmp_path: Path) -> None:
        """A missing anonymous database raises GeoIPError naming it."""
        with pytest.raises(GeoIPError, match=re.escape("anon.mmdb")):
            GeoResolver(GeoIPSettings(db, anonymous_database=tmp_path / "anon.mmdb"))

    def test_unchanged_files_are_not_reloaded(self, db: Path, resolvers: Any) -> None:
        """check_for_changes reports nothing when no file changed."""
        resolver = resolvers(db)
        assert resolver.check_for_changes() == []
        assert resolver.last_error is None

    def test_changed_file_is_swapped_in(self, tmp_path: Path, db: Path, resolvers: Any) -> None:
        """A replaced database is loaded, answers at once, and the cache is cleared."""
        resolver = resolvers(db)
        assert resolver.resolve(addr("81.2.69.1")).location == Location("US", "US-CA")
        build_db(tmp_path, [("81.2.69.0/24", "BR")], build_epoch=BUILD_EPOCH + 60)
        assert resolver.check_for_changes() == [
            ReloadResult(db, True, None, BUILD_EPOCH + 60)
        ]
        assert resolver.resolve(addr("81.2.69.1")).location == Location("BR", None)
        assert resolver.cache_hits == 0
        assert resolver.build_epoch == BUILD_EPOCH + 60
        assert resolver.check_for_changes() == []

    def test_touched_file_is_reloaded(self, db: Path, resolvers: Any) -> None:
        """A new mtime alone (same inode and size) counts as a change."""
        resolver = resolvers(db)
        stat = db.stat()
        os.utime(db, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        results = resolver.check_for_changes()
        assert [result.ok for result in results] == [True]

    def test_corrupt_new_file_keeps_the_old_reader(self, db: Path, resolvers: Any) -> None:
        """A bad replacement is reported once; the old database keeps answering."""
        resolver = resolvers(db)
        replace_file(db, b"\x00garbage" * 64)
        [result] = resolver.check_for_changes()
        assert not result.ok and result.path == db
        assert result.error is not None and str(db) in result.error
        assert resolver.last_error == result.error
        assert resolver.resolve(addr("81.2.69.1")).location == Location("US", "US-CA")
        assert resolver.check_for_changes() == []
        assert resolver.last_error == result.error

    def test_good_file_after_a_bad_one_clears_the_error(
        self, tmp_path: Path, db: Path, resolvers: Any
    ) -> None:
        """Fixing the file after a failed reload loads it and clears last_error."""
        resolver = resolvers(db)
        replace_file(db, b"\x00garbage" * 64)
        resolver.check_for_changes()
        build_db(tmp_path, [("81.2.69.0/24", "AR")])
        assert [result.ok for result in resolver.check_for_changes()] == [True]
        assert resolver.last_error is None
        assert resolver.resolve(addr("81.2.69.1")).location == Location("AR", None)

    def test_deleted_file_keeps_the_old_reader(self, db: Path, resolvers: Any) -> None:
        """A removed database is an error; the loaded one stays in service."""
        resolver = resolvers(db)
        db.unlink()
        [result] = resolver.check_for_changes()
        assert not result.ok and result.error is not None and "No such file" in result.error
        assert resolver.resolve(addr("89.160.20.1")).location == Location("DE", None)

    def test_anonymous_database_reload(self, tmp_path: Path, db: Path, resolvers: Any) -> None:
        """The anonymous database is watched and swapped like the main one."""
        anonymous = build_anonymous_db(tmp_path, [("81.2.69.0/24", "vpn")])
        resolver = resolvers(db, anonymous_database=anonymous)
        assert resolver.resolve(addr("81.2.69.1")).location.anonymous
        build_anonymous_db(tmp_path, [("89.160.20.0/24", "tor")], build_epoch=BUILD_EPOCH + 1)
        assert resolver.check_for_changes() == [
            ReloadResult(anonymous, True, None, BUILD_EPOCH + 1)
        ]
        assert not resolver.resolve(addr("81.2.69.1")).location.anonymous
        assert resolver.resolve(addr("89.160.20.1")).location == Location("DE", None, True)


class TestSettings:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"cache_size": -1}, "negative"),
            ({"cache_size": 1.5}, "integer"),
            ({"lookup_private": "yes"}, "lookup_private"),
            ({"overrides": (("10.0.0.0/8", Location("US")),)}, "pair"),
            (
                {
                    "overrides": (
                        (ip_network("10.0.0.0/8"), Location("US")),
                        (ip_network("::ffff:10.0.0.0/104"), Location("DE")),
                    )
                },
                "twice",
            ),
        ],
    )
    def test_invalid_settings(self, kwargs: dict[str, Any], message: str) -> None:
        """GeoIPSettings rejects bad values, naming the field."""
        with pytest.raises(ValueError, match=message):
            GeoIPSettings(Path("x.mmdb"), **kwargs)

    def test_reload_result_consistency(self) -> None:
        """A ReloadResult has an error exactly when it is not ok."""
        with pytest.raises(ValueError):
            ReloadResult(Path("x"), True, "boom")
        with pytest.raises(ValueError):
            ReloadResult(Path("x"), False)
