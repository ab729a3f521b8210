"""Echo server for the Autobahn TestSuite (kosoku), on geows' native API.

Text comes back as text and binary as binary, each message whole. The
conformance tests serve it with ``--websockets-max-size 65536`` (KiB):
chapter 9 sends messages of up to 16 MiB, over the 1 MiB default.

    geows serve tests/apps/autobahn_echo.py --websockets-max-size 65536
"""

import geows


def application(environ, start_response):
    ws = geows.accept(environ)
    try:
        for message in ws:
            ws.send(message)
    except geows.ConnectionClosed:
        pass  # the peer failed or dropped the connection: nothing to answer
    return []
