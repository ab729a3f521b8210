"""Echo with geows' native API: text stays text, binary stays binary.

geows serve examples/native_echo.py
"""

import geows


def application(environ, start_response):
    ws = geows.accept(environ)
    for message in ws:
        ws.send(message)
    return []
