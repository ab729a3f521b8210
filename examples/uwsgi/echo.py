"""Echo, the classic uWSGI websocket app: every message comes back as text.

    uwsgi --http :8000 --http-websockets --gevent 100 --wsgi-file echo.py
    geows serve examples/uwsgi/echo.py

uWSGI's ``websocket_recv`` returns the payload as bytes whether the client
sent text or binary, and ``websocket_send`` always sends a text frame, so a
binary message comes back as text (it must then be valid UTF-8). When the
client goes away, ``websocket_recv`` raises ``OSError`` and the app simply
lets it end the request.
"""

import uwsgi


def application(env, start_response):
    uwsgi.websocket_handshake(env["HTTP_SEC_WEBSOCKET_KEY"], env.get("HTTP_ORIGIN", ""))
    while True:
        msg = uwsgi.websocket_recv()
        uwsgi.websocket_send(msg)
