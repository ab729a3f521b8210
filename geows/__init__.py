"""geows: a gevent WebSocket server for WSGI applications."""

__version__ = "0.1.0.dev0"
