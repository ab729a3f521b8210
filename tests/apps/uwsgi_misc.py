"""uWSGI-API corner cases that the examples do not show (test app).

/proto-always  passes ``proto="chat"`` whatever the client offered.
/no-context    a greenlet calls ``websocket_send`` without a request context;
               the error it gets is sent to the client (through the context).
/str-send      ``websocket_send`` of a ``str`` and ``websocket_send_binary``.
/meta          plain HTTP: uwsgi.version as text.
"""

import gevent
import uwsgi


def application(env, start_response):
    path = env["PATH_INFO"]
    if path == "/proto-always":
        uwsgi.websocket_handshake(proto="chat")
        while True:
            uwsgi.websocket_send(uwsgi.websocket_recv())
    if path == "/no-context":
        uwsgi.websocket_handshake()
        ctx = uwsgi.request_context()

        def orphan():
            try:
                uwsgi.websocket_send(b"should not be sent")
            except OSError as exc:
                return f"OSError: {exc}"
            return "sent without a context"

        outcome = gevent.spawn(orphan).get()
        uwsgi.websocket_send(outcome, request_context=ctx)
        uwsgi.websocket_send(uwsgi.websocket_recv(request_context=ctx))
        return []
    if path == "/str-send":
        uwsgi.websocket_handshake()
        uwsgi.websocket_send("h\u00e9llo \u2603")
        uwsgi.websocket_send_binary(b"\x00\xff")
        uwsgi.websocket_recv()
        return []
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"version=" + uwsgi.version]
