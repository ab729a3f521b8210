"""The SSL context of an ``--https`` listener (geows.tls.server_context).

No network: handshakes run between two ``ssl.SSLObject`` over memory BIOs.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Optional

import pytest
import trustme

from geows.config import Config, ConfigError
from geows.listeners import Listener
from geows.tls import server_context
from tests.certs import Certs, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("certs")))


def https(
    certs: Certs, ciphers: Optional[str] = None, cafile: Optional[str] = None
) -> Listener:
    return Listener(
        "https",
        ("127.0.0.1", 8443),
        certs.cert_file,
        certs.key_file,
        ciphers=ciphers,
        cafile=cafile,
    )


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> str:
    """Run a handshake in memory; the TLS version agreed (SSLError if none)."""
    bios = [ssl.MemoryBIO() for _ in range(4)]
    server_end = server.wrap_bio(bios[0], bios[1], server_side=True)
    client_end = client.wrap_bio(bios[2], bios[3], server_hostname="localhost")
    for _ in range(10):
        done = 0
        for end in (client_end, server_end):
            try:
                end.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        bios[0].write(bios[3].read())
        bios[2].write(bios[1].read())
        if done == 2:
            version = server_end.version()
            assert version is not None
            return version
    raise AssertionError("the handshake did not finish")


def test_tls_1_2_is_the_oldest_version_served(certs):
    context = server_context(https(certs))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    client = certs.client_context()
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    assert handshake(context, client) == "TLSv1.2"
    assert handshake(context, certs.client_context()) == "TLSv1.3"


def test_compression_and_renegotiation_are_off(certs):
    options = server_context(https(certs)).options
    assert options & ssl.OP_NO_COMPRESSION
    assert options & ssl.OP_NO_RENEGOTIATION


def test_the_ciphers_are_the_stdlibs_defaults_for_servers(certs):
    ours = {c["name"] for c in server_context(https(certs)).get_ciphers()}
    default = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    assert ours == {c["name"] for c in default.get_ciphers()}
    weak = ("RC4", "DES", "MD5", "NULL", "EXPORT", "anon")
    assert not [name for name in ours if any(w in name for w in weak)]


def test_the_listeners_ciphers_replace_the_tls_1_2_suites(certs):
    context = server_context(https(certs, ciphers="ECDHE-RSA-AES128-GCM-SHA256"))
    tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == {"ECDHE-RSA-AES128-GCM-SHA256"}


def test_ciphers_openssl_does_not_know_are_an_error(certs):
    with pytest.raises(ssl.SSLError):
        server_context(https(certs, ciphers="NO-SUCH-CIPHER"))


def test_without_a_ca_no_client_certificate_is_asked_for(certs):
    context = server_context(https(certs))
    assert context.verify_mode == ssl.CERT_NONE
    assert handshake(context, certs.client_context())


def test_with_a_ca_a_client_certificate_from_it_is_required(certs):
    context = server_context(https(certs, cafile=certs.ca_file))
    assert context.verify_mode == ssl.CERT_REQUIRED
    with_cert = certs.client_context(client_cert=certs.client_file)
    assert handshake(context, with_cert)
    with pytest.raises(ssl.SSLError):
        handshake(context, certs.client_context())


def test_with_a_ca_a_client_certificate_from_another_ca_is_refused(certs, tmp_path):
    other = tmp_path / "other.pem"
    trustme.CA().issue_cert(
        "stranger.example"
    ).private_key_and_cert_chain_pem.write_to_path(str(other))
    context = server_context(https(certs, cafile=certs.ca_file))
    assert len(context.get_ca_certs()) == 1
    with pytest.raises(ssl.SSLError):
        handshake(context, certs.client_context(client_cert=str(other)))


def test_http_1_1_is_the_protocol_offered_by_alpn(certs):
    context = server_context(https(certs))
    client = certs.client_context()
    client.set_alpn_protocols(["h2", "http/1.1"])
    bios = [ssl.MemoryBIO() for _ in range(4)]
    server_end = context.wrap_bio(bios[0], bios[1], server_side=True)
    client_end = client.wrap_bio(bios[2], bios[3], server_hostname="localhost")
    for _ in range(10):
        for end in (client_end, server_end):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
        bios[0].write(bios[3].read())
        bios[2].write(bios[1].read())
    assert client_end.selected_alpn_protocol() == "http/1.1"


def test_the_default_context_is_gevents_so_handshakes_never_block_the_hub(certs):
    from gevent import ssl as gevent_ssl

    assert isinstance(server_context(https(certs)), gevent_ssl.SSLContext)
    stdlib = server_context(https(certs), ssl.SSLContext)
    assert not isinstance(stdlib, gevent_ssl.SSLContext)


# -- the config check ------------------------------------------------------------


def test_config_refuses_a_key_that_is_not_a_key(certs):
    config = Config(app="app.py", https=[f":8443,{certs.cert_file},{certs.ca_file}"])
    with pytest.raises(ConfigError, match=r"--https 0\.0\.0\.0:8443"):
        config.validate()


def test_config_refuses_unknown_ciphers(certs):
    config = Config(app="app.py", https=[certs.https(":8443") + ",NO-SUCH-CIPHER"])
    with pytest.raises(ConfigError, match="cipher"):
        config.validate()


def test_config_accepts_good_files_and_a_client_ca(certs):
    Config(
        app="app.py", https=[certs.https(":8443")], https_ca=certs.ca_file
    ).validate()


def test_config_refuses_a_handshake_timeout_of_zero(certs):
    config = Config(app="app.py", https=[certs.https()], tls_handshake_timeout=0)
    with pytest.raises(ConfigError, match="--tls-handshake-timeout"):
        config.validate()
