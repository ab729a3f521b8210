"""Who the client is, and who may open a WebSocket (test app).

/env         JSON of the client's environ values (CLIENT_KEYS)
/ws          geows.accept(); send the same JSON, then echo
/ws-native   geows.accept(origins=["https://native.example"]); echo
/ws-uwsgi    uwsgi.websocket_handshake(); echo
"""

import json

import uwsgi

import geows

CLIENT_KEYS = (
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "wsgi.url_scheme",
    "HTTPS",
    "geows.peer_addr",
    "HTTP_X_FORWARDED_FOR",
)


def client(environ):
    return json.dumps({key: environ.get(key) for key in CLIENT_KEYS})


def echo(ws):
    try:
        for message in ws:
            ws.send(message)
    except geows.ConnectionClosed:
        pass


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/env":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [client(environ).encode("utf-8")]
    if path == "/ws":
        ws = geows.accept(environ)
        ws.send(client(environ))
        echo(ws)
        return []
    if path == "/ws-native":
        echo(geows.accept(environ, origins=["https://native.example"]))
        return []
    if path == "/ws-uwsgi":
        uwsgi.websocket_handshake()
        while True:
            try:
                message = uwsgi.websocket_recv()
            except OSError:
                return []
            uwsgi.websocket_send(message)
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found\n"]
