"""A second greenlet sending on the same websocket while the first receives.

The request's greenlet blocks in ``websocket_recv`` (echoing what arrives);
a ticker greenlet sends ``tick N`` every 50 ms. uWSGI finds "the current
request" per greenlet, so the ticker passes the handle it got from
``uwsgi.request_context()``.

    uwsgi --http :8000 --http-websockets --gevent 100 --wsgi-file second_greenlet.py
"""

import gevent
import uwsgi

TICK = 0.05


def ticker(ctx):
    n = 0
    while True:
        gevent.sleep(TICK)
        n += 1
        try:
            uwsgi.websocket_send(f"tick {n}".encode(), request_context=ctx)
        except OSError:
            return  # the connection is gone


def application(env, start_response):
    uwsgi.websocket_handshake(env["HTTP_SEC_WEBSOCKET_KEY"], env.get("HTTP_ORIGIN", ""))
    ctx = uwsgi.request_context()
    tick = gevent.spawn(ticker, ctx)
    try:
        while True:
            msg = uwsgi.websocket_recv()
            uwsgi.websocket_send(b"echo " + msg)
    finally:
        tick.kill()
