"""Wait on the websocket and another file descriptor with ``gevent.select``.

The classic uWSGI pattern (usually with a redis pub/sub socket as the other
descriptor): select on ``uwsgi.connection_fd()`` and the other fd, then read
whichever is ready. Here the other fd is a pipe fed by a producer greenlet
that writes ``event N`` lines; each line is forwarded to the client, and
each client message is answered with ``echo <message>``.

After the websocket fd is readable, every complete message is drained with
``websocket_recv_nb`` (several may have arrived in one read). On a select
timeout ``websocket_recv_nb`` is called anyway, which lets uWSGI run its
keepalive.
"""

import os

import gevent
import gevent.select
import uwsgi

EVENTS = 5
EVENT_EVERY = 0.05


def producer(write_fd):
    for n in range(1, EVENTS + 1):
        gevent.sleep(EVENT_EVERY)
        os.write(write_fd, f"event {n}\n".encode())


def application(env, start_response):
    uwsgi.websocket_handshake(env["HTTP_SEC_WEBSOCKET_KEY"], env.get("HTTP_ORIGIN", ""))
    ws_fd = uwsgi.connection_fd()
    read_fd, write_fd = os.pipe()
    feeder = gevent.spawn(producer, write_fd)
    pending = b""
    try:
        while True:
            ready, _, _ = gevent.select.select([ws_fd, read_fd], [], [], 1.0)
            if not ready:
                uwsgi.websocket_recv_nb()
                continue
            if read_fd in ready:
                pending += os.read(read_fd, 4096)
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    uwsgi.websocket_send(line)
            if ws_fd in ready:
                while True:
                    msg = uwsgi.websocket_recv_nb()
                    if not msg:
                        break
                    uwsgi.websocket_send(b"echo " + msg)
    finally:
        feeder.kill()
        os.close(read_fd)
        os.close(write_fd)
