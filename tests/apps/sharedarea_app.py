"""The shared area through the uwsgi API (test app; serve with --sharedarea).

Every endpoint uses area ``id`` (query ``id``, default 0). A ValueError
from uwsgi -- a bad id, position or length -- is answered 400 with its
message, or over a websocket as the text ``400 <message>``.

POST /write?pos=N          the request body written at N; 204
GET  /read?pos=N[&len=M]   sharedarea_read(id, N, M)
GET  /byte?pos=N[&set=V]   sharedarea_writebyte (when set), sharedarea_readbyte
POST /inc?pos=N[&by=K]     sharedarea_inc64 (dec64 when K < 0): "VALUE PID"
GET  /ws                   websocket; each message is a command:
                           "text POS [LEN]"   websocket_send_from_sharedarea
                           "binary POS [LEN]" the binary variant
"""

import os
from urllib.parse import parse_qs

import uwsgi


def _reply(start_response, status, body=b""):
    start_response(status, [("Content-Type", "application/octet-stream")])
    return [body]


def _serve_websocket(area_id):
    uwsgi.websocket_handshake()
    while True:
        try:
            command = uwsgi.websocket_recv().decode("ascii").split()
        except OSError:
            return []
        kind, *numbers = command
        send = {
            "text": uwsgi.websocket_send_from_sharedarea,
            "binary": uwsgi.websocket_send_binary_from_sharedarea,
        }[kind]
        try:
            send(area_id, *[int(n) for n in numbers])
        except ValueError as exc:
            uwsgi.websocket_send(f"400 {exc}")


def application(env, start_response):
    query = {k: v[0] for k, v in parse_qs(env.get("QUERY_STRING", "")).items()}
    path = env["PATH_INFO"]
    try:
        area_id = int(query.get("id", "0"))
        if path == "/ws":
            return _serve_websocket(area_id)
        pos = int(query["pos"])
        if path == "/write":
            body = env["wsgi.input"].read()
            uwsgi.sharedarea_write(area_id, pos, body)
            return _reply(start_response, "204 No Content")
        if path == "/read":
            data = uwsgi.sharedarea_read(area_id, pos, int(query.get("len", "0")))
            return _reply(start_response, "200 OK", data)
        if path == "/byte":
            if "set" in query:
                uwsgi.sharedarea_writebyte(area_id, pos, int(query["set"]))
            value = uwsgi.sharedarea_readbyte(area_id, pos)
            return _reply(start_response, "200 OK", str(value).encode())
        if path == "/inc":
            by = int(query.get("by", "1"))
            if by < 0:
                value = uwsgi.sharedarea_dec64(area_id, pos, -by)
            else:
                value = uwsgi.sharedarea_inc64(area_id, pos, by)
            return _reply(start_response, "200 OK", f"{value} {os.getpid()}".encode())
    except ValueError as exc:
        return _reply(start_response, "400 Bad Request", str(exc).encode())
    return _reply(start_response, "404 Not Found")
