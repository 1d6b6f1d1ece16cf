"""Region codes and client locations: what a restriction names and what GeoIP reports.

A region is an ISO 3166-1 alpha-2 country code ("US") or an ISO 3166-2 subdivision code ("US-CA").
The lists come from ``pycountry``, loaded once on first use; ``XK`` (Kosovo) is accepted as well,
because MaxMind databases report it although ISO has only reserved it as user-assigned.

Matching rule: a country code covers every subdivision in it, a subdivision code covers only that
subdivision. Codes are compared as reported by GeoIP, so "CN" does not cover Hong Kong, Macao or
Taiwan, which GeoIP reports as the countries HK, MO and TW.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Set
from dataclasses import dataclass

__all__ = [
    "UNKNOWN",
    "Location",
    "covered_by",
    "is_region_code",
    "location_keys",
    "validate_region",
]

# Codes MaxMind reports that ISO 3166-1 only reserves as user-assigned.
_EXTRA_COUNTRIES = frozenset({"XK"})

# Frequent non-ISO spellings: the UK and Greece as the EU writes them.
_ALIASES = {"UK": "GB", "EL": "GR"}


@dataclass(frozen=True, slots=True)
class _Codes:
    countries: frozenset[str]
    subdivisions: frozenset[str]


@functools.cache
def _codes() -> _Codes:
    """Load the ISO code lists once (pycountry parses its JSON data on first access)."""
    import pycountry  # deferred: parsing the subdivision list costs ~0.2 s

    countries = frozenset(c.alpha_2 for c in pycountry.countries) | _EXTRA_COUNTRIES
    subdivisions = frozenset(s.code.upper() for s in pycountry.subdivisions)
    return _Codes(countries, subdivisions)


def is_region_code(code: str) -> bool:
    """Tell whether ``code`` is already a canonical region code.

    Args:
        code: a candidate code, compared as is (no stripping or case folding).

    Returns:
        True for an ISO 3166-1 alpha-2 code (or XK) or an ISO 3166-2 code.
    """
    codes = _codes()
    return code in codes.countries or code in codes.subdivisions


def _suggest(canonical: str) -> list[str]:
    """Close matches for a rejected code; runs on the error path only."""
    if canonical in _ALIASES:
        return [_ALIASES[canonical]]
    import pycountry

    codes = _codes()
    if "-" not in canonical:
        # An alpha-3 code or a country name is a frequent mistake; both map to one alpha-2 code.
        country = pycountry.countries.get(alpha_3=canonical) if len(canonical) == 3 else None
        if country is None:
            try:
                country = pycountry.countries.lookup(canonical)
            except LookupError:
                country = None
        if country is not None:
            return [country.alpha_2]
        pool: Set[str] = codes.countries
    else:
        prefix = canonical.split("-", 1)[0] + "-"
        pool = {s for s in codes.subdivisions if s.startswith(prefix)} or codes.subdivisions
    return difflib.get_close_matches(canonical, sorted(pool), n=3, cutoff=0.6)


def validate_region(code: str) -> str:
    """Check a region code and return its canonical form.

    Args:
        code: an ISO 3166-1 alpha-2 or ISO 3166-2 code, in any case, with surrounding blanks.

    Returns:
        The code stripped and upper-cased, such as ``"US"`` or ``"US-CA"``.

    Raises:
        ValueError: the code is not in the ISO lists; the message names it and suggests close
            matches when there are any.
    """
    if not isinstance(code, str):
        raise ValueError(
            f"{code!r} is not a region code (expected a string such as 'US' or 'US-CA')"
        )
    canonical = code.strip().upper()
    if is_region_code(canonical):
        return canonical
    message = f"{code!r} is not an ISO 3166-1 alpha-2 country or ISO 3166-2 subdivision code"
    suggestions = _suggest(canonical) if canonical else []
    if suggestions:
        message += "; did you mean " + " or ".join(repr(s) for s in suggestions) + "?"
    raise ValueError(message)


@dataclass(frozen=True, slots=True)
class Location:
    """Where a client is, as resolved from its address.

    Codes are not checked against the ISO lists here: GeoIP data is taken as reported, and a
    code no restriction names simply matches nothing. Only the shape is checked, cheaply, since a
    Location is built for every join.

    Attributes:
        country: ISO 3166-1 alpha-2 code, upper case; None when the country is unknown.
        subdivision: full ISO 3166-2 code such as ``"US-CA"``; only together with ``country``.
        anonymous: the address is flagged by an anonymous-IP database (VPN, proxy, Tor...).
    """

    country: str | None
    subdivision: str | None = None
    anonymous: bool = False

    def __post_init__(self) -> None:
        # Built for every join: plain string tests, no regex.
        country, subdivision = self.country, self.subdivision
        if country is None:
            if subdivision is not None:
                raise ValueError(f"subdivision: {subdivision!r} given without a country")
            return
        if not (
            type(country) is str
            and len(country) == 2
            and country.isascii()
            and country.isalpha()
            and country.isupper()
        ):
            raise ValueError(f"country: {country!r} is not an upper-case alpha-2 code")
        if subdivision is not None and not (
            type(subdivision) is str
            and len(subdivision) > 3
            and subdivision[2] == "-"
            and subdivision.startswith(country)
        ):
            raise ValueError(
                f"subdivision: {subdivision!r} is not an ISO 3166-2 code in {country!r}"
                f" (expected {country}-XXX)"
            )

    @property
    def known(self) -> bool:
        """Whether the country is known."""
        return self.country is not None

    def __str__(self) -> str:
        text = self.subdivision or self.country or "unknown"
        return text + "+anonymous" if self.anonymous else text


UNKNOWN = Location(None, None)


def location_keys(location: Location) -> tuple[str, ...]:
    """The region codes that cover a location, most general first.

    Args:
        location: a client location.

    Returns:
        ``("US", "US-CA")`` for a subdivision, ``("US",)`` for a country, ``()`` when unknown.
    """
    country = location.country
    if country is None:
        return ()
    subdivision = location.subdivision
    return (country,) if subdivision is None else (country, subdivision)


def covered_by(location: Location, regions: Set[str]) -> bool:
    """Tell whether one of ``regions`` covers a location.

    Args:
        location: a client location.
        regions: canonical region codes.

    Returns:
        True when the location's country or subdivision is in ``regions``; False when unknown.
    """
    country = location.country
    if country is None:
        return False
    return country in regions or (
        location.subdivision is not None and location.subdivision in regions
    )
