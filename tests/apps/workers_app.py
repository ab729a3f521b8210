"""Worker processes and channels across them (tests/integration/test_workers.py).

GET /pid answers the worker's pid, GET /id ``PID WORKER_ID NUMPROC``. /ws:
uWSGI-style websocket that joins channel "room", sends ``pid N`` as its
first message, then publishes every message it receives to "room". POST
/say publishes its body to "room" (503 if the channel backend refuses it).
With ``WORKERS_APP_CRASH=1`` in the environment the app fails at import.
"""

import os

import uwsgi

from geows.channels import ChannelError

if os.environ.get("WORKERS_APP_CRASH") == "1":
    raise RuntimeError("workers_app: crashing at import, as asked")


def application(env, start_response):
    path = env["PATH_INFO"]
    if path == "/ws":
        uwsgi.websocket_handshake()
        uwsgi.websocket_channel_join("room")
        uwsgi.websocket_send(f"pid {os.getpid()}")
        while True:
            uwsgi.websocket_channel_publish("room", uwsgi.websocket_recv())
    if path == "/say" and env["REQUEST_METHOD"] == "POST":
        body = env["wsgi.input"].read()
        try:
            uwsgi.websocket_channel_publish("room", body)
        except ChannelError as exc:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [str(exc).encode()]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"published"]
    if path == "/id":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{os.getpid()} {uwsgi.worker_id()} {uwsgi.numproc}".encode()]
    if path == "/pid":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]
