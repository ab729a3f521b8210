"""Listener descriptions from the command line, and binding them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from geows.config import Config, ConfigError
from geows.listeners import Listener, ListenerError, bind


def test_http_takes_host_port_and_defaults_the_host_to_every_address() -> None:
    assert Listener.http("127.0.0.1:8000").address == ("127.0.0.1", 8000)
    assert Listener.http(":9000").address == ("0.0.0.0", 9000)
    assert Listener.http("[::1]:9000").address == ("::1", 9000)


def test_a_path_is_a_unix_socket() -> None:
    assert Listener.uwsgi("/run/app.sock").address == "/run/app.sock"
    assert Listener.uwsgi("unix:/run/app.sock").address == "/run/app.sock"
    assert Listener.uwsgi("app.sock").is_unix


@pytest.mark.parametrize("value", ["8000", "host:", "host:http", "h:70000"])
def test_an_address_without_a_port_is_refused(value: str) -> None:
    with pytest.raises(ListenerError):
        Listener.http(value)


def test_https_takes_uwsgi_syntax_with_ciphers_and_ca(tmp_path: Path) -> None:
    cert, key, ca = (tmp_path / n for n in ("c.pem", "k.pem", "ca.pem"))
    for f in (cert, key, ca):
        f.write_text("x")
    plain = Listener.https(f":8443,{cert},{key}")
    assert (plain.protocol, plain.scheme, plain.cafile) == ("https", "https", None)
    full = Listener.https(f":8443,{cert},{key},HIGH,!{ca}")
    assert (full.ciphers, full.cafile) == ("HIGH", str(ca))
    assert Listener.https(f":8443,{cert},{key}", cafile=str(ca)).cafile == str(ca)


def test_https_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ListenerError, match="no such file"):
        Listener.https(f":8443,{tmp_path}/nope.pem,{tmp_path}/nope.key")
    with pytest.raises(ListenerError, match="CERT,KEY"):
        Listener.https(":8443")


def test_config_lists_http_then_https_then_uwsgi_and_marks_proxy_protocol(
    tmp_path: Path,
) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    config = Config(
        http=["127.0.0.1:8000"],
        https=[f"127.0.0.1:8443,{cert},{cert}"],
        uwsgi_socket=["/tmp/x.sock"],
        proxy_protocol=["127.0.0.1:8000,/tmp/x.sock"],
    )
    found = config.listeners()
    assert [(li.protocol, li.proxy_protocol) for li in found] == [
        ("http", True),
        ("https", False),
        ("uwsgi", True),
    ]
    assert all(li.proxy_protocol for li in Config(proxy_protocol=["all"]).listeners())


def test_proxy_protocol_on_an_unknown_listener_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"no listener '127\.0\.0\.1:1'"):
        Config(http=[":8000"], proxy_protocol=["127.0.0.1:1"]).listeners()


def test_default_listener_is_local_http() -> None:
    assert Config().listeners() == [Listener("http", ("127.0.0.1", 8000))]


def test_binding_a_unix_socket_replaces_a_stale_file_but_not_a_live_one(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "s.sock")
    first = bind(Listener.uwsgi(path))
    try:
        with pytest.raises(OSError, match="another server"):
            bind(Listener.uwsgi(path))
    finally:
        first.close()
    # The file is left behind, as by a killed server: it is reused.
    second = bind(Listener.uwsgi(path))
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        client.close()
    finally:
        second.close()


def test_bind_tcp_port_zero_resolves_a_port() -> None:
    sock = bind(Listener.http("127.0.0.1:0"))
    try:
        assert sock.getsockname()[1] > 0
        assert sock.getblocking() is False
    finally:
        sock.close()
