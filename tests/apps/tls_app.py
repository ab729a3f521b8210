"""HTTPS and wss:// (test app for tests/integration/test_tls.py).

/env        JSON of the scheme-related environ values
/echo       native WebSocket echo (geows.accept)
/ws         uWSGI-style WebSocket echo (uwsgi.websocket_*)
/big?n=N    a response body of N bytes (HTTPS writes bigger than a record)
"""

import json

import uwsgi

import geows


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/env":
        keys = ("wsgi.url_scheme", "HTTPS", "SERVER_PORT", "REMOTE_ADDR")
        body = json.dumps({key: environ.get(key) for key in keys}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    if path == "/echo":
        ws = geows.accept(environ)
        for message in ws:
            ws.send(message)
        return []
    if path == "/ws":
        uwsgi.websocket_handshake()
        while True:
            uwsgi.websocket_send_binary(uwsgi.websocket_recv())
    if path == "/big":
        size = int(environ["QUERY_STRING"].partition("n=")[2] or "0")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [bytes(range(256)) * (size // 256) + b"x" * (size % 256)]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]
