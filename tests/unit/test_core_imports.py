"""The sans-I/O core stays free of I/O: importing it pulls in no gevent, no
sockets and no threads.

Each check runs in a fresh interpreter so that modules other tests (or pytest
itself) imported cannot hide what the core drags in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CORE = [
    "geows.frames",
    "geows.protocol",
    "geows.handshake",
    "geows.http",
    "geows.limits",
    "geows.exceptions",
    "geows.router",
    "geows.uwsgi_proto",
    "geows.proxy_protocol",
    "geows.forwarded",
    "geows.origins",
]

# time is a built-in module that CPython loads at start-up, so its presence
# says nothing about the core; these say a lot.
FORBIDDEN = ["gevent", "socket", "_socket", "threading", "select", "ssl", "asyncio"]


def modules_after_importing(*names: str) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(names)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        cwd=_project_root(),
    )
    return set(json.loads(result.stdout))


def _project_root() -> str:
    import geows

    return str(Path(geows.__file__).resolve().parent.parent)


def test_a_bare_interpreter_has_none_of_the_forbidden_modules():
    # The baseline: otherwise the checks below would prove nothing.
    loaded = modules_after_importing()
    assert not loaded & set(FORBIDDEN)


def test_importing_the_whole_core_loads_no_gevent_socket_or_threads():
    loaded = modules_after_importing(*CORE)
    assert set(CORE) <= loaded
    assert not {m for m in loaded if m == "gevent" or m.startswith("gevent.")}
    assert not loaded & set(FORBIDDEN)


@pytest.mark.parametrize("module", CORE)
def test_each_core_module_alone_loads_no_gevent_socket_or_threads(module):
    loaded = modules_after_importing(module)
    assert module in loaded
    assert not loaded & set(FORBIDDEN)
