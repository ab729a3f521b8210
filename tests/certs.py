"""Certificates for the TLS tests, made by trustme for each test run.

Nothing secret lives in the repository: a throwaway CA issues the server's
certificate (for 127.0.0.1 and localhost) and a client certificate, and
writes them as PEM files in a temporary directory.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import trustme


@dataclass(frozen=True)
class Certs:
    """A CA, the server's certificate and key, and a client's, as files."""

    ca: trustme.CA
    ca_file: str
    cert_file: str
    key_file: str
    #: A client certificate issued by ``ca``, with its key (one PEM file).
    client_file: str

    def https(self, address: str = "127.0.0.1:0") -> str:
        """The value of ``--https`` for a listener on ``address``."""
        return f"{address},{self.cert_file},{self.key_file}"

    def client_context(
        self, *, client_cert: Optional[str] = None, trust: bool = True
    ) -> ssl.SSLContext:
        """A client context trusting ``ca`` (unless ``trust=False``),
        presenting ``client_cert`` (a PEM file with its key) if given.
        """
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if trust:
            self.ca.configure_trust(context)
        if client_cert is not None:
            context.load_cert_chain(client_cert)
        return context


def make_certs(directory: Path) -> Certs:
    """A fresh CA and its certificates, written in ``directory``."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client.example")
    ca_file = directory / "ca.pem"
    cert_file = directory / "cert.pem"
    key_file = directory / "key.pem"
    client_file = directory / "client.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(pem.bytes() for pem in server.cert_chain_pems))
    client.private_key_and_cert_chain_pem.write_to_path(str(client_file))
    return Certs(ca, str(ca_file), str(cert_file), str(key_file), str(client_file))
