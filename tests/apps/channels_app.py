"""Named channels under test, in both styles (memory hub, one process).

WebSocket endpoints (``?join=a,b`` joins channels right after the handshake;
``?sndbuf=N`` sets the server socket's SO_SNDBUF, so that the kernel holds
little of what a member does not read and the channel backlog fills soon):

/uwsgi    uwsgi.websocket_channel_join / _leave / _publish / _publish_binary
/native   geows.accept, ws.join, ws.leave, geows.publish (str: text, bytes: binary)

Both answer the same commands, sent by the client as text messages:

``join NAME``          join, then reply ``joined NAME``
``leave NAME``         leave, then reply ``left NAME``
``pub NAME TEXT``      publish TEXT as a text message
``pubbin NAME TEXT``   publish TEXT's bytes as a binary message
anything else          reply ``echo:N:MSG``, N counting the messages that
                       recv returned so far (channel messages never count)

The reply is sent by the app's own greenlet, after the command took effect,
so a client that has read it knows the join or leave is done.

HTTP endpoints:

POST /publish?ch=NAME&kind=K   publish the body; K: ``text`` (geows.publish
                               of a str), ``bytes`` (geows.publish of bytes),
                               ``uwsgi`` (websocket_channel_publish),
                               ``uwsgi-binary`` (websocket_channel_publish_binary)
GET  /members?ch=NAME          the hub's local member count, as text
POST /flood?ch=NAME&n=N&size=S&every=T
                               a background greenlet publishes N numbered text
                               messages of S bytes (``00000042 xxxx...``),
                               sleeping T seconds after each (0: a bare
                               yield, -1: never yield); answers at once
GET  /ticker                   starts (once) a background greenlet that
                               publishes ``tick N`` on channel ``ticks`` every
                               20 ms, for as long as the server runs

App log lines start with ``APP``.
"""

import os
import socket
import sys
from urllib.parse import parse_qs

import gevent
import uwsgi

import geows
from geows.channels import current_hub

_ticker = None


def note(text):
    sys.stderr.write(f"APP {text}\n")
    sys.stderr.flush()


def _query(environ):
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _initial_channels(query):
    return [name for name in query.get("join", "").split(",") if name]


def _text(data):
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


class Commands:
    """The command protocol over one style's channel functions."""

    def __init__(self, join, leave, publish_text, publish_binary, send):
        self.join = join
        self.leave = leave
        self.publish_text = publish_text
        self.publish_binary = publish_binary
        self.send = send
        self.received = 0

    def handle(self, message):
        self.received += 1
        text = _text(message)
        verb, _, rest = text.partition(" ")
        if verb == "join" and rest:
            self.join(rest)
            self.send(f"joined {rest}")
        elif verb == "leave" and rest:
            self.leave(rest)
            self.send(f"left {rest}")
        elif verb in ("pub", "pubbin") and rest:
            name, _, payload = rest.partition(" ")
            if verb == "pub":
                self.publish_text(name, payload)
            else:
                self.publish_binary(name, payload.encode("utf-8"))
        else:
            self.send(f"echo:{self.received}:{text}")


def _set_sndbuf(fd, query):
    if "sndbuf" in query:
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(query["sndbuf"]))
        finally:
            sock.close()


def uwsgi_member(environ):
    uwsgi.websocket_handshake()
    _set_sndbuf(environ["geows.connection"].websocket.fileno(), _query(environ))
    for name in _initial_channels(_query(environ)):
        uwsgi.websocket_channel_join(name)
    commands = Commands(
        uwsgi.websocket_channel_join,
        uwsgi.websocket_channel_leave,
        lambda name, text: uwsgi.websocket_channel_publish(name, text.encode()),
        uwsgi.websocket_channel_publish_binary,
        uwsgi.websocket_send,
    )
    try:
        while True:
            commands.handle(uwsgi.websocket_recv())
    except OSError as exc:
        note(f"uwsgi member ended: {exc}")
    return []


def native_member(environ):
    ws = geows.accept(environ)
    _set_sndbuf(ws.fileno(), _query(environ))
    for name in _initial_channels(_query(environ)):
        ws.join(name)
    commands = Commands(ws.join, ws.leave, geows.publish, geows.publish, ws.send)
    try:
        for message in ws:
            commands.handle(message)
    except geows.ConnectionClosed as exc:
        note(f"native member ended: {exc.code}")
    else:
        note(f"native member ended: {ws.close_code}")
    return []


def flood(name, count, size, every):
    for i in range(count):
        head = f"{i:08d} "
        geows.publish(name, head + "x" * max(0, size - len(head)))
        if every >= 0:
            gevent.sleep(every)
    note(f"flood of {count} on {name} done")


def tick():
    n = 0
    while True:
        geows.publish("ticks", f"tick {n}")
        n += 1
        gevent.sleep(0.02)


def respond(start_response, status, body=b""):
    start_response(status, [("Content-Type", "text/plain")])
    return [body]


def application(environ, start_response):
    global _ticker
    path = environ["PATH_INFO"]
    query = _query(environ)
    if path == "/uwsgi":
        return uwsgi_member(environ)
    if path == "/native":
        return native_member(environ)
    if path == "/members":
        count = current_hub().members(query.get("ch", ""))
        return respond(start_response, "200 OK", str(count).encode())
    if path == "/publish" and environ["REQUEST_METHOD"] == "POST":
        size = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(size)
        name, kind = query["ch"], query.get("kind", "text")
        if kind == "text":
            geows.publish(name, body.decode("utf-8"))
        elif kind == "bytes":
            geows.publish(name, body)
        elif kind == "uwsgi":
            uwsgi.websocket_channel_publish(name, body)
        elif kind == "uwsgi-binary":
            uwsgi.websocket_channel_publish_binary(name, body)
        else:
            return respond(start_response, "400 Bad Request", b"bad kind\n")
        return respond(start_response, "204 No Content")
    if path == "/flood" and environ["REQUEST_METHOD"] == "POST":
        gevent.spawn(
            flood,
            query["ch"],
            int(query.get("n", "1000")),
            int(query.get("size", "100")),
            float(query.get("every", "0")),
        )
        return respond(start_response, "202 Accepted")
    if path == "/ticker":
        if _ticker is None:
            _ticker = gevent.spawn(tick)
        return respond(start_response, "200 OK", b"ticking\n")
    return respond(start_response, "404 Not Found", b"not found\n")
