"""Types of the optional C fast path of geows.http.parse_head (_httpfast.c)."""

from typing import Optional, Union

def parse_head(
    buf: Union[bytes, bytearray],
    max_request_line: int,
    max_header_line: int,
    max_headers: int,
    max_head: int,
    /,
) -> Optional[tuple[str, str, str, list[tuple[str, str]], dict[str, str], int]]: ...
