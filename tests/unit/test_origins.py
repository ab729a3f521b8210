"""geows.origins: which Origin values may open a WebSocket."""

from __future__ import annotations

import re
from http import HTTPStatus

import pytest

from geows.exceptions import InvalidHandshake
from geows.origins import OriginPolicy


def allows(entries: list[str], origin: str | None, **kwargs: bool) -> bool:
    return OriginPolicy(entries, **kwargs).allows(origin)


# -- Exact origins ----------------------------------------------------------------


def test_an_exact_origin_is_allowed():
    assert allows(["https://example.com"], "https://example.com")


def test_another_host_scheme_or_port_is_refused():
    policy = OriginPolicy(["https://example.com"])
    assert not policy.allows("https://example.org")
    assert not policy.allows("http://example.com")
    assert not policy.allows("https://example.com:8443")
    assert not policy.allows("https://www.example.com")


def test_scheme_and_host_compare_case_insensitively():
    assert allows(["HTTPS://Example.COM"], "https://example.com")
    assert allows(["https://example.com"], "HTTPS://EXAMPLE.com")


def test_a_default_port_is_the_same_as_none():
    assert allows(["https://example.com:443"], "https://example.com")
    assert allows(["https://example.com"], "https://example.com:443")
    assert allows(["http://example.com"], "http://example.com:80")
    assert not allows(["http://example.com"], "http://example.com:443")


def test_an_explicit_port_must_match():
    policy = OriginPolicy(["http://localhost:8000"])
    assert policy.allows("http://localhost:8000")
    assert not policy.allows("http://localhost")
    assert not policy.allows("http://localhost:8001")


def test_a_scheme_without_default_port_needs_the_same_port_or_none():
    policy = OriginPolicy(["chrome-extension://abcdef"])
    assert policy.allows("chrome-extension://abcdef")
    assert not policy.allows("chrome-extension://abcdef:80")


def test_ipv6_hosts_compare_in_canonical_form():
    assert allows(["http://[2001:DB8:0::1]:8080"], "http://[2001:db8::1]:8080")
    assert not allows(["http://[2001:db8::1]"], "http://[2001:db8::2]")


def test_ipv4_hosts_compare_as_text():
    assert allows(["http://127.0.0.1:8000"], "http://127.0.0.1:8000")


def test_a_trailing_dot_is_a_different_origin():
    assert not allows(["https://example.com"], "https://example.com.")


def test_entries_may_be_comma_separated():
    policy = OriginPolicy(["https://a.example, https://b.example", "http://c.example"])
    assert policy.allows("https://b.example")
    assert policy.allows("http://c.example")


def test_a_single_string_is_one_entry_not_a_list_of_characters():
    assert OriginPolicy("https://example.com").allows("https://example.com")


# -- Origins that are not origins ------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "https://example.com/",
        "https://example.com/path",
        "https://user@example.com",
        "https://example.com?x",
        "example.com",
        "//example.com",
        "https://",
        "https://example.com:",
        "https://example.com:99999",
        "https://example.com:+443",
        "https://exam ple.com",
        "https://ex\u212aample.com",  # KELVIN SIGN lowercases to "k"
        "https://[2001:db8::1",
        "https://example.com https://example.org",
        "",
    ],
)
def test_a_malformed_origin_header_is_refused(origin):
    assert not allows(["https://example.com", "https://*.example.com"], origin)


# -- Wildcards --------------------------------------------------------------------


def test_a_wildcard_matches_one_or_more_subdomain_labels():
    policy = OriginPolicy(["https://*.example.com"])
    assert policy.allows("https://a.example.com")
    assert policy.allows("https://a.b.example.com")
    assert policy.allows("https://A.Example.Com")


def test_a_wildcard_does_not_match_the_domain_itself():
    assert not allows(["https://*.example.com"], "https://example.com")


def test_a_wildcard_does_not_match_a_name_merely_ending_like_the_domain():
    assert not allows(["https://*.example.com"], "https://evilexample.com")


def test_a_wildcard_does_not_match_the_domain_inside_another_name():
    policy = OriginPolicy(["https://*.example.com"])
    assert not policy.allows("https://example.com.evil.org")
    assert not policy.allows("https://a.example.com.evil.org")
    assert not policy.allows("https://a.example.community")


def test_a_wildcard_keeps_the_scheme_and_default_port():
    policy = OriginPolicy(["https://*.example.com"])
    assert not policy.allows("http://a.example.com")
    assert not policy.allows("https://a.example.com:8443")
    assert policy.allows("https://a.example.com:443")


def test_a_port_in_a_wildcard_pattern_must_match():
    policy = OriginPolicy(["https://*.example.com:8443"])
    assert policy.allows("https://a.example.com:8443")
    assert not policy.allows("https://a.example.com")


def test_a_wildcard_port_matches_any_port_and_none():
    policy = OriginPolicy(["http://localhost:*"])
    assert policy.allows("http://localhost:3000")
    assert policy.allows("http://localhost")
    assert not policy.allows("http://localhost.evil.org:3000")
    assert not policy.allows("https://localhost:3000")


def test_wildcard_host_and_port_combine():
    policy = OriginPolicy(["https://*.example.com:*"])
    assert policy.allows("https://a.example.com:1234")
    assert not policy.allows("https://example.com:1234")


def test_a_star_alone_allows_any_origin_present():
    policy = OriginPolicy(["*"])
    assert policy.allows("https://anything.example")
    assert policy.allows("null")
    assert not policy.allows(None)


# -- null and missing -------------------------------------------------------------


def test_null_is_refused_unless_listed():
    assert not allows(["https://example.com"], "null")
    assert allows(["https://example.com", "null"], "null")


def test_null_does_not_allow_other_origins():
    assert not allows(["null"], "https://example.com")


def test_a_missing_origin_is_refused_by_a_policy():
    assert not allows(["https://example.com"], None)


def test_a_missing_origin_is_allowed_when_asked():
    assert allows(["https://example.com"], None, allow_missing=True)


def test_an_empty_policy_allows_everything_even_a_missing_origin():
    policy = OriginPolicy([])
    assert not policy
    assert policy.allows(None)
    assert policy.allows("https://evil.example")
    assert policy.allows("null")


def test_blank_entries_make_an_empty_policy():
    assert not OriginPolicy(["", " , "])


def test_any_entry_makes_the_policy_true():
    assert OriginPolicy(["null"])


# -- check ------------------------------------------------------------------------


def test_check_returns_quietly_for_an_allowed_origin():
    OriginPolicy(["https://example.com"]).check("https://example.com")


def test_check_refuses_with_403_naming_the_origin():
    with pytest.raises(InvalidHandshake) as info:
        OriginPolicy(["https://example.com"]).check("https://evil.example")
    assert info.value.status == HTTPStatus.FORBIDDEN
    assert "https://evil.example" in info.value.reason
    assert info.value.headers == []


def test_check_refuses_a_missing_origin_with_403():
    with pytest.raises(InvalidHandshake) as info:
        OriginPolicy(["https://example.com"]).check(None)
    assert info.value.status == HTTPStatus.FORBIDDEN
    assert "missing Origin" in info.value.reason


def test_check_shortens_a_huge_origin_in_the_reason():
    with pytest.raises(InvalidHandshake) as info:
        OriginPolicy(["https://example.com"]).check("https://" + "a" * 10_000)
    assert len(info.value.reason) < 300


def test_check_quotes_control_characters_in_the_reason():
    with pytest.raises(InvalidHandshake) as info:
        OriginPolicy(["https://example.com"]).check("https://e\r\nx")
    assert "\r" not in info.value.reason


# -- Invalid entries --------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        "example.com",
        "https://example.com/",
        "https://example.com/app",
        "https://example.com:99999",
        "https://example.com:",
        "https://exa_mple .com",
        "https://*",
        "https://*.",
        "https://a.*.example.com",
        "https://*example.com",
        "https://ex*ample.com",
        "*://example.com",
        "https://*.[2001:db8::1]",
        "https://*.example.com:8*",
        "**",
        "https://münchen.de",
        "https://[2001:db8::1%eth0]",
        "1https://example.com",
    ],
)
def test_an_invalid_entry_raises_value_error_naming_it(entry):
    with pytest.raises(ValueError, match=re.escape(repr(entry))):
        OriginPolicy(["https://fine.example", entry])
