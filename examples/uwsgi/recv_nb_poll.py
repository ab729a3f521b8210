"""Polling with ``websocket_recv_nb``: never block in recv, sleep between polls.

``websocket_recv_nb`` returns a complete message, or ``b""`` when none has
arrived; it raises ``OSError`` once the connection is closed. The loop is
where an app would also check other sources of work.
"""

import gevent
import uwsgi

POLL = 0.01


def application(env, start_response):
    uwsgi.websocket_handshake(env["HTTP_SEC_WEBSOCKET_KEY"], env.get("HTTP_ORIGIN", ""))
    while True:
        msg = uwsgi.websocket_recv_nb()
        if msg:
            uwsgi.websocket_send(msg)
        else:
            gevent.sleep(POLL)
