"""Start and stop real ``geows serve`` processes on 127.0.0.1 for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
EXAMPLES = ROOT / "examples"
_SERVING = re.compile(r"serving .* on (https?)://(\[?[0-9a-f.:]+\]?):(\d+)/")
#: Any listener's line: http://HOST:PORT/, uwsgi://HOST:PORT/, uwsgi://unix:PATH
_LISTENING = re.compile(r"geows serving .* on ([a-z]+://\S+)")


class ServerProcess:
    """A running ``geows serve``; its log lines accumulate in ``lines``."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        #: The first HTTP or HTTPS listener's port and host (its scheme in
        #: ``scheme``); every one announced is in ``urls``.
        self.port = 0
        self.host = "127.0.0.1"
        self.scheme = "http"
        #: Every listener's URL as logged, in order (``uwsgi://127.0.0.1:PORT/``).
        self.urls: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            listening = _LISTENING.search(line)
            if listening:
                self.urls.append(listening.group(1))
            match = _SERVING.search(line)
            if match:
                scheme, host, port = match.groups()
                if not self._ready.is_set():
                    self.scheme = scheme
                    self.host = host.strip("[]")
                    self.port = int(port)
                    self._ready.set()
        self._ready.set()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def url(self, prefix: str, timeout: float = 10.0) -> str:
        """The first listener URL starting with ``prefix`` (``"uwsgi://"``),
        waiting for its log line (the listeners are logged one by one).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for url in list(self.urls):
                if url.startswith(prefix):
                    return url
            time.sleep(0.02)
        raise AssertionError(f"no listener {prefix}... in:\n{self.log}")

    def port_of(self, scheme: str, timeout: float = 10.0) -> int:
        """The port of the first listener announced with ``scheme`` (http or
        https), waiting for its line: each listener has its own.
        """
        url = self.url(scheme + "://", timeout).rstrip("/")
        return int(url.rsplit(":", 1)[1])

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.port_of('https')}"

    @property
    def wss_url(self) -> str:
        return f"wss://127.0.0.1:{self.port_of('https')}"

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> str:
        """The first log line matching ``pattern`` (regex), waiting for it."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if regex.search(line):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r} in:\n{self.log}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the server and wait for its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"server did not stop on {sig}:\n{self.log}") from None


def start_server(
    app: str | Path, *args: str, env: Optional[dict[str, str]] = None
) -> ServerProcess:
    """Start ``geows serve APP --http 127.0.0.1:0 ARGS`` and wait until it
    listens (ARGS with a listener of their own, ``--http`` or ``--https``,
    replace that one).
    """
    cmd = [sys.executable, "-m", "geows", "serve", str(app)]
    listen = ("--http", "--http-socket", "--https", "--https-socket", "--ini")
    if not any(a in listen or a.split("=", 1)[0] in listen for a in args):
        cmd += ["--http", "127.0.0.1:0"]
    cmd += list(args)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=str(ROOT),
    )
    server = ServerProcess(proc)
    if not server._ready.wait(20) or not server.port:
        proc.kill()
        raise AssertionError(f"server did not start: {cmd}\n{server.log}")
    return server


@contextmanager
def running(
    app: str | Path, *args: str, env: Optional[dict[str, str]] = None
) -> Iterator[ServerProcess]:
    """``with running(app) as server:`` -- stopped (SIGTERM) on exit."""
    server = start_server(app, *args, env=env)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.stop()
