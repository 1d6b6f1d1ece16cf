"""Tests for proxy.policy.regions: region codes, locations and the matching rule."""

from __future__ import annotations

import dataclasses

import pytest

from proxy.policy.regions import (
    UNKNOWN,
    Location,
    covered_by,
    is_region_code,
    location_keys,
    validate_region,
)


class TestValidateRegion:
    @pytest.mark.parametrize("code", ["US", "CN", "HK", "MO", "TW", "DE", "GB", "FR"])
    def test_country_codes_are_accepted(self, code: str) -> None:
        """An ISO 3166-1 alpha-2 code is returned unchanged."""
        assert validate_region(code) == code

    @pytest.mark.parametrize("code", ["US-CA", "DE-BY", "GB-ENG", "FR-20R", "CN-BJ"])
    def test_subdivision_codes_are_accepted(self, code: str) -> None:
        """An ISO 3166-2 code is returned unchanged."""
        assert validate_region(code) == code

    def test_kosovo_is_accepted(self) -> None:
        """XK (user-assigned, used by MaxMind for Kosovo) is accepted."""
        assert validate_region("XK") == "XK"

    @pytest.mark.parametrize(
        ("given", "canonical"), [(" us ", "US"), ("us-ca", "US-CA"), ("\tde\n", "DE")]
    )
    def test_code_is_stripped_and_upper_cased(self, given: str, canonical: str) -> None:
        """Blanks are stripped and the code upper-cased."""
        assert validate_region(given) == canonical

    @pytest.mark.parametrize("code", ["XX", "", "U", "USA", "US-XX", "US_CA", "ZZ-01", "EU"])
    def test_non_iso_codes_are_rejected_naming_the_value(self, code: str) -> None:
        """Anything outside the ISO lists raises ValueError naming the value."""
        with pytest.raises(ValueError, match="is not an ISO 3166-1 alpha-2 country") as info:
            validate_region(code)
        assert str(info.value).startswith(repr(code))

    def test_message_is_the_documented_one(self) -> None:
        """The message for an unknown code reads as documented."""
        with pytest.raises(ValueError) as info:
            validate_region("XX")
        assert str(info.value).startswith(
            "'XX' is not an ISO 3166-1 alpha-2 country or ISO 3166-2 subdivision code"
        )

    @pytest.mark.parametrize(
        ("code", "suggestion"),
        [("UK", "'GB'"), ("USA", "'US'"), ("Germany", "'DE'"), ("US-CAL", "'US-CA'")],
    )
    def test_close_matches_are_suggested(self, code: str, suggestion: str) -> None:
        """A likely intended code is suggested."""
        with pytest.raises(ValueError, match="did you mean") as info:
            validate_region(code)
        assert suggestion in str(info.value)

    def test_non_string_is_rejected(self) -> None:
        """A value that is not a string raises ValueError naming it."""
        with pytest.raises(ValueError, match="42"):
            validate_region(42)  # type: ignore[arg-type]

    def test_is_region_code_needs_the_canonical_form(self) -> None:
        """is_region_code compares as is: lower case is not canonical."""
        assert is_region_code("US-CA")
        assert is_region_code("XK")
        assert not is_region_code("us")
        assert not is_region_code("XX")


class TestLocation:
    def test_known_and_unknown(self) -> None:
        """A location is known exactly when its country is."""
        assert Location("US").known
        assert Location("US", "US-CA").known
        assert not UNKNOWN.known
        assert not Location(None, anonymous=True).known

    def test_unknown_constant(self) -> None:
        """UNKNOWN has no country, no subdivision and no anonymous flag."""
        assert Location(None, None, anonymous=False) == UNKNOWN

    @pytest.mark.parametrize(
        ("location", "text"),
        [
            (Location("US", "US-CA"), "US-CA"),
            (Location("CN"), "CN"),
            (UNKNOWN, "unknown"),
            (Location("DE", anonymous=True), "DE+anonymous"),
            (Location(None, anonymous=True), "unknown+anonymous"),
        ],
    )
    def test_str(self, location: Location, text: str) -> None:
        """str() gives the most precise code, 'unknown', and '+anonymous' when flagged."""
        assert str(location) == text

    def test_is_frozen(self) -> None:
        """A location cannot be changed."""
        with pytest.raises(dataclasses.FrozenInstanceError):
            Location("US").country = "CN"  # type: ignore[misc]

    def test_subdivision_needs_a_country(self) -> None:
        """A subdivision without a country is rejected, naming the field and value."""
        with pytest.raises(ValueError, match="subdivision: 'US-CA'"):
            Location(None, "US-CA")

    @pytest.mark.parametrize("subdivision", ["DE-BY", "CA", "US-", "USCA", ""])
    def test_subdivision_must_be_in_the_country(self, subdivision: str) -> None:
        """A subdivision code must be the country code, a dash and a local part."""
        with pytest.raises(ValueError, match=f"subdivision: {subdivision!r}"):
            Location("US", subdivision)

    @pytest.mark.parametrize("country", ["us", "USA", "U", "", "1A", "ÉÉ"])
    def test_country_must_be_alpha_2_upper_case(self, country: str) -> None:
        """A country must be two upper-case ASCII letters."""
        with pytest.raises(ValueError, match=f"country: {country!r}"):
            Location(country)


class TestMatching:
    def test_keys_of_a_subdivision(self) -> None:
        """A subdivision is covered by its country and by itself."""
        assert location_keys(Location("US", "US-CA")) == ("US", "US-CA")

    def test_keys_of_a_country(self) -> None:
        """A location without subdivision is covered by its country only."""
        assert location_keys(Location("DE")) == ("DE",)

    def test_keys_of_unknown(self) -> None:
        """An unknown location is covered by nothing, anonymous or not."""
        assert location_keys(UNKNOWN) == ()
        assert location_keys(Location(None, anonymous=True)) == ()

    def test_country_covers_its_subdivisions(self) -> None:
        """'US' covers US-CA and the US as a whole."""
        assert covered_by(Location("US", "US-CA"), {"US"})
        assert covered_by(Location("US"), {"US"})

    def test_subdivision_covers_only_itself(self) -> None:
        """'US-CA' covers US-CA only: not US-NY, not the US without a subdivision."""
        assert covered_by(Location("US", "US-CA"), {"US-CA"})
        assert not covered_by(Location("US", "US-NY"), {"US-CA"})
        assert not covered_by(Location("US"), {"US-CA"})

    @pytest.mark.parametrize("country", ["HK", "MO", "TW"])
    def test_china_does_not_cover_hong_kong_macao_taiwan(self, country: str) -> None:
        """'CN' does not cover HK, MO or TW, which GeoIP reports as separate countries."""
        assert not covered_by(Location(country), {"CN"})
        assert "CN" not in location_keys(Location(country))
        assert covered_by(Location(country), {country})

    def test_unknown_is_never_covered(self) -> None:
        """No region set covers an unknown location."""
        assert not covered_by(UNKNOWN, {"US", "CN", "US-CA"})

    def test_other_country_is_not_covered(self) -> None:
        """A country does not cover another country's location."""
        assert not covered_by(Location("CA", "CA-QC"), {"US"})
