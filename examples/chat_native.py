"""A one-room chat with geows' native API: every message goes to every member.

    geows serve examples/chat_native.py      # members connect to ws://.../chat

The room is a module-level set of sockets and a broadcast is a loop of
``member.send(text)``: enough for a demo and for the chat scenario of
``loadtest/locustfile.py`` (one process, one room). Named channels, shared
across processes, will replace this hand-made room.
"""

import geows

MEMBERS = set()


def broadcast(text):
    """Send ``text`` to every member; members that went away are dropped."""
    for member in list(MEMBERS):
        try:
            member.send(text)
        except geows.ConnectionClosed:
            MEMBERS.discard(member)


def application(environ, start_response):
    if environ["PATH_INFO"] != "/chat":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"chat lives at /chat\n"]
    ws = geows.accept(environ)
    MEMBERS.add(ws)
    try:
        for message in ws:
            if isinstance(message, str):
                broadcast(message)
    except geows.ConnectionClosed:
        pass  # an abnormal end is still the end of this member
    finally:
        MEMBERS.discard(ws)
    return []
