"""geows.handshake against RFC 6455 1.3, 4.2 and 4.4."""

from __future__ import annotations

import base64
import hashlib
from http import HTTPStatus

import pytest

from geows.exceptions import InvalidHandshake
from geows.handshake import (
    GUID,
    accept_key,
    check_request,
    has_token,
    offered_subprotocols,
    response_bytes,
    response_headers,
    select_subprotocol,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def headers(**overrides):
    """A valid upgrade request's headers, with lower-case names."""
    base = {
        "host": "server.example.com",
        "upgrade": "websocket",
        "connection": "Upgrade",
        "sec-websocket-key": KEY,
        "sec-websocket-version": "13",
        "origin": "http://example.com",
    }
    for name, value in overrides.items():
        name = name.replace("_", "-")
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def check(method="GET", version="HTTP/1.1", has_body=False, **overrides):
    return check_request(method, version, headers(**overrides).get, has_body=has_body)


def refusal(**kwargs) -> InvalidHandshake:
    with pytest.raises(InvalidHandshake) as info:
        check(**kwargs)
    return info.value


# -- RFC 6455 1.3 and 4.2.2: Sec-WebSocket-Accept -------------------------------------


class TestSection1_3AcceptKey:
    def test_the_rfc_example_key_gives_the_rfc_example_accept(self):
        assert accept_key(KEY) == ACCEPT

    def test_the_guid_is_the_one_from_the_rfc(self):
        assert GUID == b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def test_accept_is_base64_of_the_sha1_of_key_and_guid(self):
        key = base64.b64encode(bytes(range(16))).decode()
        digest = hashlib.sha1((key + GUID.decode()).encode()).digest()
        assert accept_key(key) == base64.b64encode(digest).decode()


# -- RFC 6455 4.2.1: reading the client's opening handshake --------------------------


class TestSection4_2_1CheckRequest:
    def test_a_valid_request_is_accepted_and_returns_its_key(self):
        assert check() == KEY

    def test_the_header_names_are_asked_for_in_lower_case(self):
        asked = []

        def get(name):
            asked.append(name)
            return headers().get(name)

        check_request("GET", "HTTP/1.1", get)
        assert asked
        assert all(name == name.lower() for name in asked)

    @pytest.mark.parametrize("method", ["POST", "PUT", "HEAD", "CONNECT", "get"])
    def test_a_method_other_than_get_is_refused_with_405(self, method):
        exc = refusal(method=method)
        assert exc.status == HTTPStatus.METHOD_NOT_ALLOWED
        assert ("Allow", "GET") in exc.headers

    @pytest.mark.parametrize("version", ["HTTP/1.0", "HTTP/0.9"])
    def test_http_before_1_1_is_refused_with_400(self, version):
        assert refusal(version=version).status == HTTPStatus.BAD_REQUEST

    @pytest.mark.parametrize("upgrade", [None, "", "h2c", "websocket2", "web socket"])
    def test_a_missing_or_other_upgrade_is_refused_with_426(self, upgrade):
        exc = refusal(upgrade=upgrade)
        assert exc.status == HTTPStatus.UPGRADE_REQUIRED
        assert ("Upgrade", "websocket") in exc.headers

    @pytest.mark.parametrize("upgrade", ["WebSocket", "WEBSOCKET", "h2c, websocket"])
    def test_the_upgrade_token_is_case_insensitive_and_may_be_in_a_list(self, upgrade):
        assert check(upgrade=upgrade) == KEY

    @pytest.mark.parametrize("connection", [None, "", "keep-alive", "upgrades"])
    def test_a_connection_header_without_upgrade_is_refused_with_400(self, connection):
        assert refusal(connection=connection).status == HTTPStatus.BAD_REQUEST

    @pytest.mark.parametrize(
        "connection", ["keep-alive, Upgrade", "upgrade", "Upgrade,keep-alive"]
    )
    def test_the_upgrade_token_may_be_one_of_several_connection_options(
        self, connection
    ):
        assert check(connection=connection) == KEY

    @pytest.mark.parametrize("ws_version", [None, "", "8", "12", "14", "13, 8"])
    def test_a_version_other_than_13_is_refused_with_426_naming_13(self, ws_version):
        exc = refusal(sec_websocket_version=ws_version)
        assert exc.status == HTTPStatus.UPGRADE_REQUIRED
        assert ("Sec-WebSocket-Version", "13") in exc.headers

    def test_a_missing_key_is_refused_with_400(self):
        assert refusal(sec_websocket_key=None).status == HTTPStatus.BAD_REQUEST

    @pytest.mark.parametrize(
        "key",
        [
            pytest.param("", id="empty"),
            pytest.param("not base64!!", id="not-base64"),
            pytest.param("dGhlIHNhbXBsZSBub25jZQ", id="unpadded"),
            pytest.param(base64.b64encode(b"x" * 15).decode(), id="15-bytes"),
            pytest.param(base64.b64encode(b"x" * 17).decode(), id="17-bytes"),
            pytest.param("dGhlIHNhbXBsZSBub25jZQ==dGhl", id="trailing-junk"),
        ],
    )
    def test_a_key_that_is_not_base64_of_16_bytes_is_refused_with_400(self, key):
        assert refusal(sec_websocket_key=key).status == HTTPStatus.BAD_REQUEST

    def test_surrounding_whitespace_around_the_key_is_ignored(self):
        assert check(sec_websocket_key=f" {KEY} ") == KEY

    def test_a_request_with_a_body_is_refused_with_400(self):
        assert refusal(has_body=True).status == HTTPStatus.BAD_REQUEST

    def test_origin_is_optional(self):
        assert check(origin=None) == KEY

    def test_a_request_without_host_is_refused_with_400(self):
        assert refusal(host=None).status == HTTPStatus.BAD_REQUEST


class TestHasToken:
    def test_a_token_is_found_among_comma_separated_values(self):
        assert has_token("a, B ,c", "b")

    def test_a_substring_is_not_a_token(self):
        assert not has_token("upgrades", "upgrade")

    def test_a_missing_value_has_no_tokens(self):
        assert not has_token(None, "upgrade")
        assert not has_token("", "upgrade")


# -- RFC 6455 4.2.2: subprotocols --------------------------------------------------


class TestSection4_2_2Subprotocols:
    def test_offered_subprotocols_are_split_in_order(self):
        assert offered_subprotocols("chat, superchat ,, v2") == [
            "chat",
            "superchat",
            "v2",
        ]

    def test_no_header_offers_nothing(self):
        assert offered_subprotocols(None) == []
        assert offered_subprotocols("") == []

    def test_the_first_supported_protocol_the_client_offered_is_picked(self):
        assert select_subprotocol(["chat", "superchat"], ["superchat", "chat"]) == (
            "superchat"
        )

    def test_a_supported_protocol_not_offered_is_never_picked(self):
        assert select_subprotocol(["chat"], ["superchat"]) is None

    def test_nothing_is_picked_when_the_client_offered_nothing(self):
        assert select_subprotocol([], ["chat"]) is None

    def test_nothing_is_picked_when_the_server_supports_nothing(self):
        assert select_subprotocol(["chat"], None) is None
        assert select_subprotocol(["chat"], []) is None

    def test_subprotocol_names_are_compared_exactly(self):
        assert select_subprotocol(["Chat"], ["chat"]) is None


# -- RFC 6455 4.2.2: the server's opening handshake ------------------------------------


class TestSection4_2_2Response:
    def test_the_response_headers_carry_upgrade_connection_and_accept(self):
        assert response_headers(KEY) == [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", ACCEPT),
        ]

    def test_a_selected_subprotocol_is_echoed(self):
        assert ("Sec-WebSocket-Protocol", "chat") in response_headers(KEY, "chat")

    def test_the_response_is_a_well_formed_101(self):
        data = response_bytes(KEY)
        assert data == (
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + ACCEPT.encode() + b"\r\n"
            b"\r\n"
        )

    def test_the_response_with_a_subprotocol_ends_with_one_blank_line(self):
        data = response_bytes(KEY, "chat")
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep
        assert rest == b""
        lines = head.split(b"\r\n")
        assert lines[0] == b"HTTP/1.1 101 Switching Protocols"
        fields = dict(line.split(b": ", 1) for line in lines[1:])
        assert fields[b"Sec-WebSocket-Protocol"] == b"chat"
        assert fields[b"Sec-WebSocket-Accept"] == ACCEPT.encode()
        assert b"Sec-WebSocket-Protocol" not in response_bytes(KEY)
