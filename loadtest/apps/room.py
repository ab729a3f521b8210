"""A chat room on geows' named channels: the server of fan-out scenario ``f``.

Every WebSocket that connects, on any path, joins the room (``?room=NAME``,
default ``room``) and every message it sends is published there, so it
reaches every member, the sender included; text stays text and binary stays
binary. That is what ``loadtest/bench.py`` scenario ``f`` and the benchmark
kit's ``wsload fanout`` expect: subscribers only receive, one publisher
sends, and a publisher's own messages come back to it too.

    geows serve loadtest/apps/room.py --http 127.0.0.1:8000 --disable-logging
"""

from urllib.parse import parse_qs

import geows


def application(environ, start_response):
    if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"a chat room: connect a WebSocket to any path, ?room=NAME\n"]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    room = query.get("room", ["room"])[0]
    ws = geows.accept(environ)
    ws.join(room)
    try:
        for message in ws:
            geows.publish(room, message)
    except geows.ConnectionClosed:
        pass  # gone; closing left the room
    return []
