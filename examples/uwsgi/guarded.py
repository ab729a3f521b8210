"""Refuse before the handshake, let handshake errors answer the client, and
notice the end of the session.

* Without ``?token=secret`` the app answers 403 and never upgrades.
* ``websocket_handshake`` raises ``OSError`` when the request is not a valid
  upgrade (a plain GET, a wrong ``Sec-WebSocket-Version``...). The app lets
  it propagate: the server answers with an error status.
* ``websocket_recv`` raises ``OSError`` when the client closes; the app
  catches it to log the end of the session, then ends the request.
"""

import sys
from urllib.parse import parse_qs

import uwsgi

TOKEN = "secret"


def application(env, start_response):
    query = parse_qs(env.get("QUERY_STRING", ""))
    if query.get("token") != [TOKEN]:
        start_response("403 Forbidden", [("Content-Type", "text/plain")])
        return [b"forbidden\n"]
    who = query.get("who", ["anonymous"])[0]
    # An empty key means "the request's own Sec-WebSocket-Key".
    uwsgi.websocket_handshake(
        env.get("HTTP_SEC_WEBSOCKET_KEY", ""), env.get("HTTP_ORIGIN", "")
    )
    count = 0
    try:
        while True:
            msg = uwsgi.websocket_recv()
            count += 1
            uwsgi.websocket_send(msg)
    except OSError as exc:
        print(
            f"guarded: session of {who} ended after {count} messages: {exc}",
            file=sys.stderr,
            flush=True,
        )
    return []
