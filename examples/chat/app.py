"""A chat room on named channels, written in uWSGI's style.

    geows serve examples/chat/app.py                  # one process
    geows serve examples/chat/app.py --processes 4 --channels redis://127.0.0.1:6379/0

Open http://127.0.0.1:8000/ in two browser windows. Each message a browser
sends is published on the room's channel; every member's socket gets it in
the background while the app waits in websocket_recv(). POST /say?room=R
(body: the text) announces from a plain HTTP request.
"""

import os
from urllib.parse import parse_qs

import uwsgi

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "index.html"), "rb") as fh:
    PAGE = fh.read()
MAX_ROOM = 64


def _room(env):
    query = parse_qs(env.get("QUERY_STRING", ""))
    room = query.get("room", ["lobby"])[0][:MAX_ROOM]
    return "room:" + (room or "lobby")


def application(env, start_response):
    path = env["PATH_INFO"]
    if path == "/ws":
        room = _room(env)
        uwsgi.websocket_handshake()
        uwsgi.websocket_channel_join(room)
        try:
            while True:
                msg = uwsgi.websocket_recv()
                if msg:
                    uwsgi.websocket_channel_publish(room, msg)
        except OSError:
            return []  # the browser left; the room forgets it by itself
    if path == "/say" and env["REQUEST_METHOD"] == "POST":
        size = int(env.get("CONTENT_LENGTH") or 0)
        text = env["wsgi.input"].read(min(size, 4096))
        uwsgi.websocket_channel_publish(_room(env), b"[announcement] " + text)
        start_response("204 No Content", [])
        return []
    if path == "/":
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [PAGE]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found\n"]
