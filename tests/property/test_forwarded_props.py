"""Property tests for geows.forwarded and geows.origins: junk never raises,
spoofing never wins, a policy never lets an uncovered host through.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geows.exceptions import InvalidHandshake
from geows.forwarded import TrustedProxies, resolve
from geows.origins import OriginPolicy

TRUSTED = TrustedProxies(["10.0.0.0/8", "2001:db8:ff::/48", "unix"])
TRUSTED_HOPS = ["10.0.0.1", "10.9.8.7", "2001:db8:ff::1", "::ffff:10.1.1.1"]
UNTRUSTED_HOPS = ["203.0.113.7", "198.51.100.1", "2001:db8::5", "::ffff:1.2.3.4"]

# Pieces that make random headers likely to reach the deeper parsing paths.
PIECES = [
    "for=", "For=", "proto=", "by=", "host=", "https", "http", "wss", "ftp",
    ",", ", ", ";", " ", "\t", '"', "\\", "=", ":", "[", "]", "_", "_x",
    "unknown", "80", "99999", "4711", "::", "2001:db8::5", "10.0.0.1",
    "203.0.113.7", "::ffff:", "1.2.3", "%eth0", "\x00", "\xe9",
]  # fmt: skip
# Lists of plausible hops, so that many examples resolve to a header address.
HOPS = [
    *TRUSTED_HOPS, *UNTRUSTED_HOPS, "unknown", "_obf", "1.2.3", "[2001:db8::5]:80",
    "203.0.113.7:4711", "for=203.0.113.7", 'for="[2001:db8::5]"', "for=10.0.0.1",
    "for=_x;proto=https", "proto=wss", 'for="10.9.8.7:1"',
]  # fmt: skip
hop_text = st.lists(st.sampled_from(HOPS), min_size=1, max_size=5).map(", ".join)
text = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(PIECES), max_size=16).map("".join),
    hop_text,
)
header_names = st.sampled_from(
    ["forwarded", "x-forwarded-for", "x-forwarded-proto", "host"]
)
headers = st.lists(
    st.tuples(header_names, st.one_of(hop_text, text)), min_size=1, max_size=4
)
trusted_peers = [("10.0.0.2", 1), ("::ffff:10.0.0.2", 2), (None, None), ("", None)]
peers = st.sampled_from([*trusted_peers, ("203.0.113.9", 3), ("junk", 4)])
choices = st.sampled_from(["auto", "forwarded", "x-forwarded-for"])


def addresses_in(values: list[str]) -> set[object]:
    """Every address any substring of the values spells, escapes removed."""
    found: set[object] = set()
    for value in values:
        value = value.replace("\\", "")
        for i in range(len(value)):
            for j in range(i + 1, len(value) + 1):
                try:
                    ip = ipaddress.ip_address(value[i:j])
                except ValueError:
                    continue
                found.add(ip)
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                    found.add(ip.ipv4_mapped)
    return found


@settings(max_examples=400, deadline=None)
@given(headers, peers, st.sampled_from(["http", "https"]), choices)
def test_any_header_text_resolves_to_the_peer_or_an_address_in_the_headers(
    hdrs, peer, scheme, choice
):
    got = resolve(peer, scheme, hdrs, TRUSTED, header=choice)
    assert got.scheme in ("http", "https")
    if got.addr != peer[0]:
        assert got.via_proxy
        assert got.addr is not None
        assert ipaddress.ip_address(got.addr) in addresses_in([v for _, v in hdrs])
    if peer[0] not in TRUSTED:
        assert (got.addr, got.port, got.scheme, got.via_proxy) == (*peer, scheme, False)


# -- Whatever a client prepends, our proxies' hops decide --------------------------

hop_lists = st.lists(st.sampled_from(TRUSTED_HOPS), max_size=3)


def canonical(addr: str) -> str:
    """The form resolve() returns: canonical, IPv4-mapped as IPv4."""
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


def node(addr: str) -> str:
    return f'"[{addr}]"' if ":" in addr else addr


@settings(max_examples=300, deadline=None)
@given(
    text,
    st.sampled_from(UNTRUSTED_HOPS),
    hop_lists,
    st.booleans(),
    st.sampled_from(["forwarded", "x-forwarded-for"]),
)
def test_a_client_prefix_never_changes_the_resolved_client(
    spoof: str, real: str, proxies: list[str], same_line: bool, family: str
):
    if family == "forwarded":
        ours = ", ".join(f"for={node(a)}" for a in [real, *proxies])
    else:
        ours = ", ".join([real, *proxies])
    if same_line:
        hdrs = [(family, f"{spoof}, {ours}")]
    else:
        hdrs = [(family, spoof), (family, ours)]
    got = resolve(("10.0.0.2", 1), "http", hdrs, TRUSTED, header=family)
    assert got.addr == canonical(real)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(TRUSTED_HOPS), min_size=1, max_size=4))
def test_a_list_of_trusted_hops_resolves_to_its_leftmost(hops: list[str]):
    got = resolve(
        ("10.0.0.2", 1), "http", [("x-forwarded-for", ", ".join(hops))], TRUSTED
    )
    assert got.addr == canonical(hops[0])


# -- Origins -----------------------------------------------------------------------

LABELS = [
    "example",
    "com",
    "evil",
    "org",
    "a",
    "b",
    "evilexample",
    "localhost",
    "xn--bcher-kva",
]
names = st.lists(st.sampled_from(LABELS), min_size=1, max_size=3).map(".".join)
schemes = st.sampled_from(["http", "https", "HTTPS"])
ports = st.sampled_from(["", ":80", ":443", ":8000"])


@st.composite
def entries(draw: st.DrawFn) -> str:
    wildcard = draw(st.booleans())
    port = draw(st.sampled_from(["", ":80", ":443", ":8000", ":*"]))
    return f"{draw(schemes)}://{'*.' if wildcard else ''}{draw(names)}{port}"


origins = st.one_of(
    st.builds(lambda s, h, p: f"{s}://{h}{p}", schemes, names, ports),
    text,
)


def covered(origin: str, entry: str) -> bool:
    """The host rule alone, written plainly: same host, or a proper subdomain."""
    scheme, _, rest = origin.lower().partition("://")
    e_scheme, _, e_rest = entry.lower().partition("://")
    host = rest.split(":")[0]
    e_host = e_rest.split(":")[0]
    if scheme != e_scheme:
        return False
    if e_host.startswith("*."):
        return host.endswith(e_host[1:]) and len(host) > len(e_host) - 1
    return host == e_host


@st.composite
def near_misses(draw: st.DrawFn, entry: str) -> str:
    """An origin close to ``entry``: the wildcard filled or dropped, a label
    glued on, another domain appended, another port.
    """
    prefix = draw(st.sampled_from(["", "a.", "evil", "a.b.", ".", "*."]))
    origin = entry.replace("*.", prefix)
    origin = origin.replace(":*", draw(st.sampled_from(["", ":1", ":8000"])))
    scheme, _, rest = origin.partition("://")
    host, colon, port = rest.partition(":")
    host += draw(st.sampled_from(["", "", ".evil.org", "evil", "."]))
    port_part = draw(st.sampled_from([colon + port, ":443", ""]))
    return f"{scheme}://{host}{port_part}"


@st.composite
def policy_and_origin(draw: st.DrawFn) -> tuple[list[str], str]:
    policy_entries = draw(st.lists(entries(), min_size=1, max_size=4))
    origin = draw(
        st.one_of(origins, st.sampled_from(policy_entries).flatmap(near_misses))
    )
    return policy_entries, origin


@settings(max_examples=500, deadline=None)
@given(policy_and_origin())
def test_a_policy_never_allows_an_origin_whose_host_is_not_covered(
    case: tuple[list[str], str],
):
    policy_entries, origin = case
    if OriginPolicy(policy_entries).allows(origin):
        assert any(covered(origin, e) for e in policy_entries)


@settings(max_examples=300, deadline=None)
@given(entries(), st.sampled_from(LABELS), st.booleans())
def test_every_origin_an_entry_describes_is_allowed(
    entry: str, label: str, explicit_default: bool
):
    origin = entry.replace("*.", f"{label}.").replace(":*", ":1234")
    if explicit_default and origin.count(":") == 1:
        origin += ":443" if origin.lower().startswith("https") else ":80"
    assert OriginPolicy([entry]).allows(origin)


@settings(max_examples=300, deadline=None)
@given(st.lists(entries(), max_size=3), st.one_of(st.none(), text))
def test_allows_never_raises_and_check_agrees_with_it(
    policy_entries: list[str], origin: Optional[str]
):
    policy = OriginPolicy(policy_entries)
    if policy.allows(origin):
        policy.check(origin)
    else:
        with pytest.raises(InvalidHandshake):
            policy.check(origin)
