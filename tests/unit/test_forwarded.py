"""geows.forwarded: trusted proxies, RFC 7239 Forwarded and X-Forwarded-*."""

from __future__ import annotations

from typing import Optional

import pytest

from geows.forwarded import Client, TrustedProxies, resolve

PROXY = "10.0.0.2"  # our proxy, trusted below
CLIENT = "203.0.113.7"
TRUSTED = TrustedProxies(["10.0.0.0/24", "2001:db8:ff::/48", "unix"])


def client(
    *headers: tuple[str, str],
    peer: tuple[Optional[str], Optional[int]] = (PROXY, 40000),
    scheme: str = "http",
    trusted: TrustedProxies = TRUSTED,
    header: str = "auto",
) -> Client:
    return resolve(peer, scheme, list(headers), trusted, header=header)


def xff(value: str) -> tuple[str, str]:
    return ("x-forwarded-for", value)


def xfp(value: str) -> tuple[str, str]:
    return ("x-forwarded-proto", value)


def fwd(value: str) -> tuple[str, str]:
    return ("forwarded", value)


# -- TrustedProxies ---------------------------------------------------------------


def test_an_address_entry_trusts_that_address_only():
    trusted = TrustedProxies(["192.0.2.1"])
    assert "192.0.2.1" in trusted
    assert "192.0.2.2" not in trusted


def test_a_network_entry_trusts_every_address_in_it():
    trusted = TrustedProxies(["192.0.2.0/24"])
    assert "192.0.2.200" in trusted
    assert "192.0.3.1" not in trusted


def test_ipv6_addresses_and_networks_are_trusted_in_any_spelling():
    trusted = TrustedProxies(["2001:db8::/32", "fe80::1"])
    assert "2001:DB8:0:0::abcd" in trusted
    assert "fe80:0::1" in trusted
    assert "2001:db9::1" not in trusted


def test_entries_may_be_comma_separated_with_blanks_ignored():
    trusted = TrustedProxies(["192.0.2.1, 192.0.2.2,", " 198.51.100.0/24 "])
    assert "192.0.2.2" in trusted
    assert "198.51.100.9" in trusted


def test_a_single_string_is_one_entry_not_a_list_of_characters():
    assert "192.0.2.1" in TrustedProxies("192.0.2.1")


def test_loopback_trusts_127_slash_8_and_ipv6_loopback():
    trusted = TrustedProxies(["loopback"])
    assert "127.0.0.1" in trusted
    assert "127.1.2.3" in trusted
    assert "::1" in trusted
    assert "10.0.0.1" not in trusted


def test_private_trusts_rfc_1918_and_unique_local_ranges():
    trusted = TrustedProxies(["private"])
    for addr in ["10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "fd00::1"]:
        assert addr in trusted
    for addr in ["172.32.0.1", "8.8.8.8", "127.0.0.1", "2001:db8::1"]:
        assert addr not in trusted


def test_words_are_case_insensitive():
    trusted = TrustedProxies(["LoopBack", "UNIX"])
    assert "127.0.0.1" in trusted
    assert None in trusted


def test_unix_trusts_a_peer_without_address():
    trusted = TrustedProxies(["unix"])
    assert None in trusted
    assert "" in trusted
    assert "127.0.0.1" not in trusted


def test_a_peer_without_address_is_not_trusted_unless_unix_is_listed():
    trusted = TrustedProxies(["loopback"])
    assert None not in trusted
    assert "" not in trusted


def test_an_ipv4_mapped_peer_counts_as_its_ipv4_address():
    trusted = TrustedProxies(["127.0.0.1"])
    assert "::ffff:127.0.0.1" in trusted
    assert "::ffff:127.0.0.2" not in trusted


def test_an_ipv4_mapped_entry_counts_as_its_ipv4_network():
    trusted = TrustedProxies(["::ffff:192.0.2.0/120"])
    assert "192.0.2.9" in trusted


def test_a_peer_address_that_does_not_parse_is_not_trusted():
    assert "not-an-ip" not in TrustedProxies(["0.0.0.0/0", "::/0"])


def test_an_empty_list_trusts_nobody_and_is_false():
    trusted = TrustedProxies([])
    assert not trusted
    assert "127.0.0.1" not in trusted
    assert None not in trusted


def test_any_entry_makes_the_list_true():
    assert TrustedProxies(["unix"])
    assert TrustedProxies(["::1"])


@pytest.mark.parametrize(
    "entry",
    ["example.com", "10.0.0.300", "10.0.0.0/33", "10.0.0.1/24", "1.2.3", "localhost"],
)
def test_an_invalid_entry_raises_value_error_naming_it(entry):
    with pytest.raises(ValueError, match=entry.replace(".", r"\.")):
        TrustedProxies(["127.0.0.1", entry])


# -- Whom to believe --------------------------------------------------------------


def test_without_headers_the_client_is_the_peer():
    assert client() == Client(PROXY, 40000, "http", False)


def test_an_untrusted_peer_has_its_headers_ignored():
    got = client(xff("1.1.1.1"), xfp("https"), fwd("for=1.1.1.1"), peer=(CLIENT, 5))
    assert got == Client(CLIENT, 5, "http", False)


def test_with_no_trusted_proxies_every_header_is_ignored():
    got = client(xff("1.1.1.1"), trusted=TrustedProxies())
    assert got == Client(PROXY, 40000, "http", False)


def test_a_trusted_peer_names_the_client_in_x_forwarded_for():
    assert client(xff(CLIENT)) == Client(CLIENT, None, "http", True)


def test_a_unix_socket_peer_is_believed_when_unix_is_trusted():
    got = client(xff(CLIENT), xfp("https"), peer=(None, None))
    assert got == Client(CLIENT, None, "https", True)


def test_a_unix_socket_peer_is_ignored_when_unix_is_not_trusted():
    got = client(xff(CLIENT), peer=("", None), trusted=TrustedProxies(["loopback"]))
    assert got == Client("", None, "http", False)


def test_an_ipv4_mapped_peer_is_trusted_as_its_ipv4():
    got = client(xff(CLIENT), peer=("::ffff:10.0.0.2", 1))
    assert got.addr == CLIENT


def test_the_connection_scheme_stands_without_a_proto_header():
    assert client(xff(CLIENT), scheme="https").scheme == "https"


# -- Spoofing: the rightmost untrusted address wins -------------------------------


def test_a_client_prefixing_x_forwarded_for_cannot_spoof_its_address():
    # The client sent "X-Forwarded-For: 6.6.6.6"; our proxy appended its peer.
    assert client(xff(f"6.6.6.6, {CLIENT}")).addr == CLIENT


def test_trusted_hops_are_skipped_from_the_right():
    got = client(xff(f"6.6.6.6, {CLIENT}, 10.0.0.9, 10.0.0.3"))
    assert got.addr == CLIENT


def test_a_client_claiming_a_trusted_address_is_still_stopped_at_itself():
    # "10.0.0.5" at the left comes from the client: the walk stops at CLIENT first.
    assert client(xff(f"10.0.0.5, {CLIENT}")).addr == CLIENT


def test_when_every_hop_is_trusted_the_leftmost_is_the_client():
    assert client(xff("10.0.0.7, 10.0.0.8, 10.0.0.9")).addr == "10.0.0.7"


def test_several_header_lines_are_one_list_in_order():
    got = client(xff(f"6.6.6.6, {CLIENT}"), xff("10.0.0.3"))
    assert got.addr == CLIENT
    got = client(xff("6.6.6.6"), xff(f"{CLIENT}, 10.0.0.3"))
    assert got.addr == CLIENT


def test_empty_list_elements_are_ignored():
    assert client(xff(f" , {CLIENT},, ")).addr == CLIENT


def test_an_empty_x_forwarded_for_keeps_the_peer_but_counts_as_forwarded():
    assert client(xff("")) == Client(PROXY, 40000, "http", True)


# -- Address forms ----------------------------------------------------------------


def test_x_forwarded_for_accepts_ipv6_bare_or_in_brackets():
    assert client(xff("2001:db8::1")).addr == "2001:db8::1"
    assert client(xff("[2001:db8::1]")).addr == "2001:db8::1"


def test_a_port_in_x_forwarded_for_is_the_client_port():
    assert client(xff("192.0.2.1:5678")) == Client("192.0.2.1", 5678, "http", True)
    assert client(xff("[2001:db8::1]:4711")).port == 4711


def test_addresses_from_headers_are_returned_in_canonical_form():
    assert client(xff("2001:DB8:0:0:0:0:0:1")).addr == "2001:db8::1"


def test_an_ipv4_mapped_hop_is_returned_as_ipv4_and_trusted_as_such():
    assert client(xff("::ffff:192.0.2.1")).addr == "192.0.2.1"
    assert client(xff(f"{CLIENT}, ::ffff:10.0.0.9")).addr == CLIENT


def test_ipv6_hops_are_skipped_when_trusted():
    assert client(xff(f"{CLIENT}, 2001:db8:ff::7")).addr == CLIENT


# -- Malformed and hidden hops ----------------------------------------------------


@pytest.mark.parametrize(
    "junk",
    [
        "example.com",
        "1.2.3",
        "1.2.3.4:",
        "1.2.3.4:99999",
        "1.2.3.4:8o",
        "[2001:db8::1",
        "[192.0.2.1]",
        "[2001:db8::1]x",
        "2001:db8::1:80:zz",
        "1.2.3.4 5.6.7.8",
    ],
)
def test_a_malformed_hop_stops_the_walk_and_keeps_what_was_resolved(junk):
    assert client(xff(f"{CLIENT}, {junk}")).addr == PROXY
    assert client(xff(f"{CLIENT}, {junk}, 10.0.0.9")).addr == "10.0.0.9"


def test_a_malformed_hop_left_of_the_client_does_not_matter():
    assert client(xff(f"garbage, {CLIENT}")).addr == CLIENT


def test_unknown_in_x_forwarded_for_keeps_the_proxy_address():
    assert client(xff(f"{CLIENT}, unknown, 10.0.0.9")).addr == "10.0.0.9"


# -- Scheme -----------------------------------------------------------------------


def test_x_forwarded_proto_sets_the_scheme():
    assert client(xff(CLIENT), xfp("https")).scheme == "https"
    assert client(xff(CLIENT), xfp("HTTP"), scheme="https").scheme == "http"


def test_ws_and_wss_mean_http_and_https():
    assert client(xff(CLIENT), xfp("wss")).scheme == "https"
    assert client(xff(CLIENT), xfp("ws"), scheme="https").scheme == "http"


@pytest.mark.parametrize("junk", ["ftp", "javascript", "", "https x", "h ttp"])
def test_an_unknown_proto_is_ignored(junk):
    assert client(xff(CLIENT), xfp(junk), scheme="https").scheme == "https"


def test_x_forwarded_proto_alone_sets_the_scheme_and_keeps_the_peer():
    assert client(xfp("https")) == Client(PROXY, 40000, "https", True)


def test_aligned_protos_give_the_scheme_of_the_chosen_hop():
    # The client spoofed "http" for its fake hop; its real hop came over https.
    got = client(xff(f"6.6.6.6, {CLIENT}, 10.0.0.9"), xfp("http, https, http"))
    assert got.scheme == "https"


def test_protos_that_do_not_line_up_give_the_last_one():
    got = client(xff(f"6.6.6.6, {CLIENT}, 10.0.0.9"), xfp("http, https"))
    assert got.scheme == "https"
    got = client(xff(f"6.6.6.6, {CLIENT}"), xfp("https, http, http"))
    assert got.scheme == "http"


def test_protos_over_several_lines_are_one_list():
    got = client(xff(f"6.6.6.6, {CLIENT}"), xfp("http"), xfp("https"))
    assert got.scheme == "https"


def test_an_untrusted_peer_cannot_upgrade_the_scheme():
    assert client(xfp("https"), peer=(CLIENT, 1)).scheme == "http"


# -- RFC 7239 Forwarded -----------------------------------------------------------


def test_forwarded_names_the_client_and_the_proto():
    got = client(fwd(f"for={CLIENT};proto=https;by=10.0.0.2"))
    assert got == Client(CLIENT, None, "https", True)


def test_forwarded_is_preferred_over_x_forwarded_for():
    got = client(xff("198.51.100.1"), xfp("http"), fwd(f"for={CLIENT};proto=https"))
    assert got == Client(CLIENT, None, "https", True)


def test_forwarded_does_not_borrow_the_scheme_from_x_forwarded_proto():
    assert client(fwd(f"for={CLIENT}"), xfp("https")).scheme == "http"


def test_header_choice_x_forwarded_for_ignores_a_client_sent_forwarded():
    # A proxy that only sets X-Forwarded-For passes the client's Forwarded on.
    got = client(fwd("for=6.6.6.6"), xff(CLIENT), header="x-forwarded-for")
    assert got.addr == CLIENT


def test_header_choice_forwarded_ignores_x_forwarded_for():
    assert client(xff(CLIENT), header="forwarded") == Client(
        PROXY, 40000, "http", False
    )


def test_an_unknown_header_choice_is_a_value_error():
    with pytest.raises(ValueError, match="x-real-ip"):
        client(header="x-real-ip")


def test_forwarded_parameter_names_are_case_insensitive():
    got = client(fwd(f"For={CLIENT};PROTO=https"))
    assert got == Client(CLIENT, None, "https", True)


def test_forwarded_quoted_ipv6_with_port():
    got = client(fwd('for="[2001:db8:cafe::17]:4711"'))
    assert got == Client("2001:db8:cafe::17", 4711, "http", True)


def test_forwarded_quoted_ipv4_and_escapes_are_unquoted():
    assert client(fwd('for="192.0.2.60:80"')).port == 80
    assert client(fwd(r'for="192.0.2.\60"')).addr == "192.0.2.60"


def test_forwarded_quoted_strings_may_hold_commas_and_semicolons():
    got = client(fwd(f'for={CLIENT};host="a,b;c";proto=https'))
    assert got == Client(CLIENT, None, "https", True)


def test_forwarded_elements_walk_from_the_right_like_x_forwarded_for():
    got = client(fwd(f"for=6.6.6.6, for={CLIENT}, for=10.0.0.9"))
    assert got.addr == CLIENT


def test_forwarded_over_several_lines_is_one_list():
    got = client(
        fwd(f"for=6.6.6.6;proto=http, for={CLIENT};proto=https"),
        fwd("for=10.0.0.9;proto=http"),
    )
    assert got == Client(CLIENT, None, "https", True)


def test_forwarded_whitespace_around_separators_is_tolerated():
    got = client(fwd(f"for=6.6.6.6 ,  for={CLIENT} ; proto=https ;"))
    assert got == Client(CLIENT, None, "https", True)


def test_forwarded_unknown_node_keeps_the_proxy_address():
    got = client(fwd(f"for={CLIENT}, for=unknown;proto=https"))
    assert got == Client(PROXY, 40000, "https", True)


def test_forwarded_obfuscated_node_keeps_the_nearest_trusted_hop():
    got = client(fwd(f"for={CLIENT}, for=_hidden, for=10.0.0.9"))
    assert got == Client("10.0.0.9", None, "http", True)


def test_forwarded_obfuscated_port_keeps_the_address():
    got = client(fwd('for="[2001:db8::1]:_p0rt"'))
    assert got == Client("2001:db8::1", None, "http", True)


def test_forwarded_element_without_for_keeps_the_peer_and_gives_the_proto():
    assert client(fwd("proto=https")) == Client(PROXY, 40000, "https", True)


def test_forwarded_chosen_element_without_proto_takes_the_last_proto():
    got = client(fwd(f"for={CLIENT}, for=10.0.0.9;proto=https"))
    assert got.scheme == "https"


def test_forwarded_proto_of_a_spoofed_element_is_not_used():
    got = client(fwd(f"for=6.6.6.6;proto=http, for={CLIENT};proto=https"))
    assert got.scheme == "https"


@pytest.mark.parametrize(
    "junk",
    [
        "for",  # no '='
        "for==1.2.3.4",
        'for="192.0.2.1',  # unterminated quote
        "for=192.0.2.1;for=192.0.2.2",  # repeated parameter
        'for=192.0.2.1"x"',
        "for=[2001:db8::1]x",
        "for=_",
        "for=_bad/obfuscation",
        "=x",
    ],
)
def test_a_malformed_forwarded_element_stops_the_walk(junk):
    assert client(fwd(f"for={CLIENT}, {junk}")).addr == PROXY
    assert client(fwd(f"for={CLIENT}, {junk}, for=10.0.0.9")).addr == "10.0.0.9"


def test_a_client_unterminated_quote_cannot_swallow_the_proxy_element():
    # The client sent 'Forwarded: for="6.6.6.6' and our proxy appended its peer.
    assert client(fwd(f'for="6.6.6.6, for={CLIENT}')).addr == CLIENT
    assert client(fwd('for="x, for="[2001:db8::5]"')).addr == "2001:db8::5"


def test_a_broken_forwarded_line_does_not_affect_the_next_line():
    assert client(fwd('for="6.6.6.6'), fwd(f"for={CLIENT}")).addr == CLIENT


def test_forwarded_unquoted_ipv6_in_brackets_is_tolerated():
    assert client(fwd("for=[2001:db8::1]:80")).port == 80
