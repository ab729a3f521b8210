"""Server lifecycle test app.

At import it records whether gevent had monkey-patched ``socket``; with
``GEOWS_TEST_EXPECT_PATCHED=1`` in the environment it asserts it was (so a
wrong order makes the server fail to start). GET /patched reports it.
/ws is a uWSGI-style echo; /slow answers after half a second. ``other`` is a
second WSGI callable.
"""

import os
import sys
import time

import uwsgi
from gevent import monkey

PATCHED_AT_IMPORT = monkey.is_module_patched("socket")
if os.environ.get("GEOWS_TEST_EXPECT_PATCHED") == "1":
    assert PATCHED_AT_IMPORT, "socket was not patched before the app was imported"


def application(env, start_response):
    if env["PATH_INFO"] == "/ws":
        uwsgi.websocket_handshake()
        while True:
            uwsgi.websocket_send(uwsgi.websocket_recv())
    if env["PATH_INFO"] == "/slow":
        print("slow request started", file=sys.stderr, flush=True)
        time.sleep(0.5)  # patched: a gevent sleep
        body = b"slow done"
    elif env["PATH_INFO"] == "/patched":
        body = f"socket patched: {PATCHED_AT_IMPORT}".encode()
    else:
        body = b"callable: application"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def other(env, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"callable: other"]
