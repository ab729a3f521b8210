"""The native API, ``geows.accept``, under test.

/echo     accept (subprotocols chat, superchat); echo every message as it
          came (text as text, binary as binary); log how the loop ended.
/info     send a JSON description of the WebSocket, then echo.
/close    wait for one message, then ``ws.close(code, reason)`` from the query;
          log what ``recv`` raises afterwards.
/timeout  ``recv(timeout=0.1)`` with nothing sent: report the timeout, then echo.
/bulk     receive N, send N binary messages of 64 KiB (message i is byte i).
/crash    receive one message, then raise.
Anything else: 404.

Log lines start with ``APP <tag>`` (``?tag=`` in the query) so each test finds
its own.
"""

import json
import sys
from urllib.parse import parse_qs

import gevent

import geows


def note(tag, text):
    sys.stderr.write(f"APP {tag} {text}\n")
    sys.stderr.flush()


def echo(ws, tag):
    try:
        for msg in ws:
            ws.send(msg)
    except geows.ConnectionClosedError as exc:
        note(tag, f"ConnectionClosedError code={exc.code} cause={exc.__cause__!r}")
    else:
        note(tag, f"iteration ended close_code={ws.close_code}")


def application(environ, start_response):
    path = environ["PATH_INFO"]
    query = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    tag = query.get("tag", "-")
    if path == "/echo":
        ws = geows.accept(environ, subprotocols=["chat", "superchat"])
        echo(ws, tag)
        return []
    if path == "/info":
        ws = geows.accept(environ, subprotocols=["chat", "superchat"])
        ws.send(
            json.dumps(
                {
                    "subprotocol": ws.subprotocol,
                    "remote_addr": ws.remote_addr,
                    "path": ws.environ["PATH_INFO"],
                    "query": ws.environ["QUERY_STRING"],
                    "same_environ": ws.environ is environ,
                    "is_websocket": isinstance(ws, geows.WebSocket),
                }
            )
        )
        echo(ws, tag)
        return []
    if path == "/close":
        ws = geows.accept(environ)
        ws.recv()
        ws.close(int(query.get("code", "1000")), query.get("reason", ""))
        try:
            ws.recv()
        except geows.ConnectionClosed as exc:
            note(tag, f"after close {type(exc).__name__} code={exc.code}")
        return []
    if path == "/timeout":
        ws = geows.accept(environ)
        try:
            ws.recv(timeout=0.1)
        except gevent.Timeout:
            ws.send("timed out")
        echo(ws, tag)
        return []
    if path == "/bulk":
        ws = geows.accept(environ)
        for i in range(int(ws.recv())):
            ws.send(bytes([i % 256]) * 65536)
        ws.close()
        return []
    if path == "/crash":
        ws = geows.accept(environ)
        ws.recv()
        raise RuntimeError("crash after accept")
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found\n"]
