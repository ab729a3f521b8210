"""Real front programs for tests: nginx and HAProxy on 127.0.0.1.

(TLS certificates for tests come from tests/certs.py.)

Each front runs in the foreground from its own temporary directory (config,
pid file, logs, nginx's temp paths), listens on a free 127.0.0.1 port and is
stopped when its ``with`` block ends, whatever happens inside::

    with running("examples/echo.py") as app, nginx_proxy(app.port) as front:
        urlopen(front.url + "/")              # through nginx to geows

The directives are the ones docs/deploy/ tells users to write, so the
integration tests exercise the documented configurations
(tests/integration/test_frontends_smoke.py checks that they match).

As with :mod:`tests.redis_server`, a missing program skips the tests that
need it, except under CI (the ``CI`` environment variable set), where they
fail: a CI run must never pass by skipping the front it is meant to test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import pytest

# One free-port helper for every test fixture (a race with another process
# binding the same port between close and reuse is possible but rare).
from tests.redis_server import _free_port as free_port

if TYPE_CHECKING:
    pass

__all__ = [
    "HAPROXY_CONFIG",
    "NGINX_PROXY_DIRECTIVES",
    "NGINX_UWSGI_DIRECTIVES",
    "FrontProcess",
    "free_port",
    "haproxy_http",
    "nginx_proxy",
    "nginx_uwsgi",
    "require_program",
]

#: Where Debian and most distributions put system daemons: not always on a
#: non-root user's PATH, so looked at as well.
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"

#: The ``location`` body of the proxy_pass configuration, as docs/deploy/nginx.rst
#: shows it. ``{upstream}`` and ``{read_timeout}`` are filled in.
NGINX_PROXY_DIRECTIVES = """\
proxy_pass http://{upstream};
proxy_http_version 1.1;
proxy_set_header Upgrade $http_upgrade;
proxy_set_header Connection "upgrade";
proxy_set_header Host $host;
proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
proxy_set_header X-Forwarded-Proto $scheme;
proxy_set_header Forwarded "";
proxy_read_timeout {read_timeout};
"""

#: The ``location`` body of the uwsgi_pass configuration (docs/deploy/nginx.rst).
NGINX_UWSGI_DIRECTIVES = """\
include {uwsgi_params};
uwsgi_pass {upstream};
uwsgi_read_timeout {read_timeout};
"""

#: What Debian's /etc/nginx/uwsgi_params holds (the copy in nginx's sources
#: has no HTTP_HOST line, so the client's Host passes as it came), written
#: into the temp directory when the system has no such file.
_UWSGI_PARAMS = """\
uwsgi_param QUERY_STRING $query_string;
uwsgi_param REQUEST_METHOD $request_method;
uwsgi_param CONTENT_TYPE $content_type;
uwsgi_param CONTENT_LENGTH $content_length;
uwsgi_param REQUEST_URI $request_uri;
uwsgi_param PATH_INFO $document_uri;
uwsgi_param DOCUMENT_ROOT $document_root;
uwsgi_param SERVER_PROTOCOL $server_protocol;
uwsgi_param REQUEST_SCHEME $scheme;
uwsgi_param HTTPS $https if_not_empty;
uwsgi_param REMOTE_ADDR $remote_addr;
uwsgi_param REMOTE_PORT $remote_port;
uwsgi_param SERVER_PORT $server_port;
uwsgi_param SERVER_NAME $server_name;
uwsgi_param HTTP_HOST $host;
"""
SYSTEM_UWSGI_PARAMS = Path("/etc/nginx/uwsgi_params")


def require_program(name: str, package: str) -> str:
    """The path of program ``name``; skip (fail under CI) when it is missing."""
    path = shutil.which(name) or shutil.which(name, path=_SBIN)
    if path is None:
        message = (
            f"{name} is not installed (apt-get install {package}): "
            f"the tests of geows behind {name} need a real one"
        )
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class FrontProcess:
    """One front program running in the foreground from :attr:`dir`."""

    def __init__(self, name: str, directory: Path, port: int) -> None:
        self.name = name
        self.dir = directory
        self.port = port
        #: The configuration file it was started with.
        self.config_path = directory / f"{name}.conf"
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:PORT``."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def config(self) -> str:
        """The text of its configuration file."""
        return self.config_path.read_text(encoding="utf-8")

    def log(self) -> str:
        """Everything it logged so far (error log, then stdout/stderr)."""
        parts = []
        for path in (self.dir / "error.log", self.dir / "output.log"):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def start(self, cmd: Sequence[str], config: str, timeout: float = 10.0) -> None:
        """Write ``config``, run ``cmd`` and wait until the port accepts."""
        self.config_path.write_text(config, encoding="utf-8")
        with (self.dir / "output.log").open("ab") as output:
            # A session of its own: if it must be killed, its workers go too.
            self.proc = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}:\n"
                    f"{self.log()}\n--- config ---\n{config}"
                )
            if _accepts(self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise AssertionError(
            f"{self.name} did not listen on {self.port}:\n{self.log()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (both programs' fast shutdown), then SIGKILL its process group."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        # A SIGKILLed nginx master leaves its workers behind, holding the
        # port: wait until the whole process group is gone, or kill it.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def _front(name: str) -> Iterator[FrontProcess]:
    directory = Path(tempfile.mkdtemp(prefix=f"geows-{name}-"))
    front = FrontProcess(name, directory, free_port())
    try:
        yield front
    finally:
        front.stop()
        shutil.rmtree(directory, ignore_errors=True)


# -- nginx --------------------------------------------------------------------


def _nginx_config(front: FrontProcess, location: str) -> str:
    d = front.dir
    # Started as root (as CI runs the tests), nginx runs its workers as
    # "nobody", which may not connect to a Unix socket that a root geows
    # created (mode 0755 from the usual umask: EACCES, 502): keep them root.
    user = "user root;\n" if os.geteuid() == 0 else ""
    body = "".join(f"            {line}\n" for line in location.splitlines())
    return (
        f"daemon off;\n{user}worker_processes 1;\n"
        f"pid {d}/nginx.pid;\nerror_log {d}/error.log info;\n"
        "events {\n    worker_connections 256;\n}\n"
        "http {\n"
        f"    access_log {d}/access.log;\n"
        f"    client_body_temp_path {d}/client_body;\n"
        f"    proxy_temp_path {d}/proxy;\n"
        f"    fastcgi_temp_path {d}/fastcgi;\n"
        f"    uwsgi_temp_path {d}/uwsgi;\n"
        f"    scgi_temp_path {d}/scgi;\n"
        "    server {\n"
        f"        listen 127.0.0.1:{front.port};\n"
        "        location / {\n"
        f"{body}"
        "        }\n"
        "    }\n"
        "}\n"
    )


def _start_nginx(front: FrontProcess, location: str) -> None:
    nginx = require_program("nginx", "nginx")
    config = _nginx_config(front, location)
    # -e: the log used before the config is read (else /var/log/nginx/).
    cmd = [nginx, "-p", str(front.dir), "-c", str(front.config_path)]
    cmd += ["-e", str(front.dir / "error.log")]
    front.start(cmd, config)


def _nginx_upstream(upstream: Union[int, str, Path]) -> str:
    """A port on 127.0.0.1 or a Unix socket path, as nginx names it."""
    if isinstance(upstream, int):
        return f"127.0.0.1:{upstream}"
    return f"unix:{Path(upstream).resolve()}"


@contextmanager
def nginx_proxy(
    upstream: Union[int, str, Path], read_timeout: str = "1h"
) -> Iterator[FrontProcess]:
    """nginx ``proxy_pass`` (HTTP and websockets) to a port on 127.0.0.1 (int)
    or a Unix socket path.

    ``read_timeout`` is ``proxy_read_timeout``; tests lower it to see
    nginx close an idle tunnel.
    """
    with _front("nginx") as front:
        location = NGINX_PROXY_DIRECTIVES.format(
            upstream=_nginx_upstream(upstream), read_timeout=read_timeout
        )
        _start_nginx(front, location)
        yield front


@contextmanager
def nginx_uwsgi(
    upstream: Union[int, str, Path], read_timeout: str = "1h"
) -> Iterator[FrontProcess]:
    """nginx ``uwsgi_pass`` to a port on 127.0.0.1 (int) or a Unix socket path."""
    with _front("nginx") as front:
        params = SYSTEM_UWSGI_PARAMS
        if not params.is_file():
            params = front.dir / "uwsgi_params"
            params.write_text(_UWSGI_PARAMS, encoding="utf-8")
        location = NGINX_UWSGI_DIRECTIVES.format(
            uwsgi_params=params,
            upstream=_nginx_upstream(upstream),
            read_timeout=read_timeout,
        )
        _start_nginx(front, location)
        yield front


# -- HAProxy ------------------------------------------------------------------

#: The configuration of docs/deploy/haproxy.rst, with the addresses left to fill.
HAPROXY_CONFIG = """\
global
    log stderr format raw local0 info

defaults
    mode http
    log global
    option httplog
    option dontlognull
    option forwardfor
    timeout connect 5s
    timeout http-request 10s
    timeout client 60s
    timeout server 60s
    timeout tunnel {tunnel_timeout}
    timeout client-fin 30s

frontend www
    bind {bind}
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
    http-request del-header Forwarded
    default_backend geows

backend geows
    balance leastconn
    server geows1 {upstream}{server_options}
"""


@contextmanager
def haproxy_http(
    upstream_port: int,
    send_proxy: bool = False,
    send_proxy_v2: bool = False,
    tunnel_timeout: str = "1h",
    check: Optional[str] = None,
) -> Iterator[FrontProcess]:
    """HAProxy in ``mode http`` to ``127.0.0.1:upstream_port``.

    ``send_proxy`` / ``send_proxy_v2`` put ``send-proxy`` / ``send-proxy-v2``
    on the server line: each connection to geows then starts with a PROXY
    protocol header (v1 text or v2 binary) naming the client.
    ``tunnel_timeout`` is ``timeout tunnel``, the idle limit of a websocket.
    ``check``: a path that HAProxy's health checks get (``option httpchk``,
    ``check inter 200ms``), each result in its log (``option
    log-health-checks``); with ``send_proxy_v2`` they start with a LOCAL
    PROXY header.
    """
    if send_proxy and send_proxy_v2:
        raise ValueError("send_proxy or send_proxy_v2, not both")
    haproxy = require_program("haproxy", "haproxy")
    with _front("haproxy") as front:
        options = " send-proxy" if send_proxy else ""
        options += " send-proxy-v2" if send_proxy_v2 else ""
        options += " check inter 200ms" if check else ""
        config = HAPROXY_CONFIG.format(
            bind=f"127.0.0.1:{front.port}",
            upstream=f"127.0.0.1:{upstream_port}",
            server_options=options,
            tunnel_timeout=tunnel_timeout,
        )
        if check:
            # Still the backend section: the server line ends the template.
            config += f"    option httpchk GET {check}\n    option log-health-checks\n"
        # -db: foreground, no daemon; the config is checked as it loads.
        front.start([haproxy, "-db", "-f", str(front.config_path)], config)
        yield front
