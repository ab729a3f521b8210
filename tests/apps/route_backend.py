"""A backend for the --route tests: shows what a routed request looks like
when it arrives.

/ws          WebSocket echo (``geows.accept``): each message back as it came
/api...      JSON: method, path, query, REMOTE_ADDR, SERVER_PORT, the HTTP_*
             fields and the body (read whole, as latin-1)
/api/big     ``?n=N``: N bytes of "x" in 64 KiB pieces (chunked in HTTP/1.1)
Anything else: 404.
"""

import json

import geows


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/ws":
        ws = geows.accept(environ)
        try:
            for msg in ws:
                ws.send(msg)
        except geows.ConnectionClosed:
            pass
        return []
    if path == "/api/big":
        size = int(environ["QUERY_STRING"].partition("n=")[2] or "0")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"x" * min(65536, size - i) for i in range(0, size, 65536))
    if path.startswith("/api"):
        body = environ["wsgi.input"].read()
        info = {
            "method": environ["REQUEST_METHOD"],
            "path": path,
            "query": environ["QUERY_STRING"],
            "remote_addr": environ["REMOTE_ADDR"],
            "server_port": environ["SERVER_PORT"],
            "content_length": environ.get("CONTENT_LENGTH"),
            "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
            "body": body.decode("latin-1"),
        }
        data = json.dumps(info).encode("utf-8")
        start_response("200 OK", [("Content-Type", "application/json")])
        return [data]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found\n"]
