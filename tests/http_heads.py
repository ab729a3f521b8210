"""What the HTTP head tests share: the grammar's character sets, hypothesis
strategies for the parts of well-formed heads, and a call of the C fast
path (geows._httpfast.parse_head) with a limits object."""

from __future__ import annotations

from typing import Any, Optional, Union

from hypothesis import strategies as st

from geows.http import HTTPLimits

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VCHAR = "".join(map(chr, range(0x21, 0x7F)))
OBS_TEXT = "".join(map(chr, range(0x80, 0x100)))

tokens = st.text(TCHAR, min_size=1, max_size=12)
ows = st.text(" \t", max_size=3)
# A field value: empty, or without surrounding whitespace (which is OWS).
field_values = st.one_of(
    st.just(""),
    st.builds(
        lambda first, middle, last: first + middle + last if middle else first,
        st.text(VCHAR + OBS_TEXT, min_size=1, max_size=1),
        st.text(VCHAR + OBS_TEXT + " \t", max_size=30),
        st.text(VCHAR + OBS_TEXT, min_size=1, max_size=1),
    ),
)
origin_targets = st.text(VCHAR + OBS_TEXT, min_size=1, max_size=40).map(
    lambda t: "/" + t
)

#: What the fast path returns for a head it handles.
FastHead = tuple[str, str, str, list[tuple[str, str]], dict[str, str], int]


def fast(
    httpfast: Any, data: Union[bytes, bytearray], limits: HTTPLimits
) -> Optional[FastHead]:
    """``httpfast.parse_head`` with the limits of ``limits``."""
    result: Optional[FastHead] = httpfast.parse_head(
        data,
        limits.max_request_line,
        limits.max_header_line,
        limits.max_headers,
        limits.max_head,
    )
    return result
