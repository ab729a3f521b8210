"""Plain WSGI over HTTP/1.1 (test app).

/env            JSON of the interesting environ values
/one            a one-item list (gets a Content-Length)
/chunks         a generator of several pieces (chunked in HTTP/1.1)
/body?mode=M    the request body read with read() (M=read), readline()
                (M=readline), iteration (M=iter) or read(n) (M=sized);
                answered as JSON: the pieces, as latin-1 strings
/short /long    declare a Content-Length of 10 / 3 and send 6 bytes
/nocontent      204 with a body the server must not send
/boom           raises before start_response
/boom-late      yields a piece, then raises
"""

import json


def _json(start_response, value, status="200 OK"):
    body = json.dumps(value).encode("utf-8")
    start_response(status, [("Content-Type", "application/json")])
    return [body]


def _read_body(stream, mode):
    if mode == "read":
        return [stream.read()]
    if mode == "readline":
        lines = []
        while True:
            line = stream.readline()
            if not line:
                return lines
            lines.append(line)
    if mode == "iter":
        return list(stream)
    if mode == "sized":
        pieces = []
        while True:
            piece = stream.read(4)
            if not piece:
                return pieces
            pieces.append(piece)
    raise ValueError(mode)


def _chunks():
    yield b"first,"
    yield b"second,"
    yield b"third"


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/env"):
        keys = (
            "REQUEST_METHOD",
            "PATH_INFO",
            "QUERY_STRING",
            "REMOTE_ADDR",
            "SERVER_PROTOCOL",
            "CONTENT_LENGTH",
            "CONTENT_TYPE",
            "HTTP_X_TEST",
            "SCRIPT_NAME",
            "wsgi.url_scheme",
        )
        info = {key: environ.get(key) for key in keys}
        info["wsgi.version"] = list(environ["wsgi.version"])
        return _json(start_response, info)
    if path == "/one":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"single"]
    if path == "/chunks":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _chunks()
    if path == "/body":
        mode = environ["QUERY_STRING"].partition("mode=")[2] or "read"
        pieces = _read_body(environ["wsgi.input"], mode)
        return _json(start_response, [p.decode("latin-1") for p in pieces])
    if path in ("/short", "/long"):
        length = "10" if path == "/short" else "3"
        start_response("200 OK", [("Content-Length", length)])
        return iter([b"abc", b"def"])
    if path == "/nocontent":
        start_response("204 No Content", [])
        return [b"not for the client"]
    if path == "/boom":
        raise RuntimeError("kaboom before start_response")
    if path == "/boom-late":

        def late():
            yield b"partial"
            raise RuntimeError("kaboom mid-body")

        start_response("200 OK", [("Content-Type", "text/plain")])
        return late()
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found\n"]
