"""Subprotocol selection and binary frames.

The client lists the subprotocols it speaks in ``Sec-WebSocket-Protocol``;
this app speaks only ``chat`` and answers with it only when offered (uWSGI
echoes ``proto`` unconditionally, so checking the offer first is what keeps
the app correct on both servers). Every message is echoed back as a binary
frame, preceded by a binary greeting naming the subprotocol in use.
"""

import uwsgi

SUPPORTED = "chat"


def offered(env):
    header = env.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "")
    return [p.strip() for p in header.split(",") if p.strip()]


def application(env, start_response):
    proto = SUPPORTED if SUPPORTED in offered(env) else ""
    uwsgi.websocket_handshake(
        env["HTTP_SEC_WEBSOCKET_KEY"], env.get("HTTP_ORIGIN", ""), proto
    )
    uwsgi.websocket_send_binary(b"proto=" + (proto or "none").encode("ascii"))
    while True:
        msg = uwsgi.websocket_recv()
        uwsgi.websocket_send_binary(msg)
