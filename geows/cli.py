"""``geows serve APP``: load a WSGI app (monkey-patching first) and serve it."""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import logging
import os
import signal
import socket
import sys
from typing import Any, Callable, Optional

from geows.config import Config, ConfigError, add_arguments
from geows.listeners import Listener

__all__ = ["load_app", "main"]

log = logging.getLogger("geows")


def build_parser() -> argparse.ArgumentParser:
    """The ``geows`` command line, generated from :class:`~geows.config.Config`."""
    parser = argparse.ArgumentParser(
        prog="geows", description="gevent WebSocket server for WSGI apps"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="serve a WSGI app",
        description="Serve a WSGI app over HTTP/1.1 and WebSockets, with "
        "uWSGI's websocket API available as `import uwsgi`.",
    )
    serve.add_argument(
        "--ini", metavar="FILE", help="read options from [geows] or [uwsgi]"
    )
    add_arguments(serve)
    return parser


def load_app(spec: str, callable_name: str = "application") -> Callable[..., Any]:
    """Import a WSGI callable from ``file.py``, ``module`` or ``module:callable``."""
    name = callable_name
    target = spec
    if ":" in spec and not os.path.exists(spec):
        target, name = spec.rsplit(":", 1)
    if target.endswith(".py") or os.path.sep in target:
        path = os.path.abspath(target)
        if not os.path.exists(path):
            raise ConfigError(f"no such file: {target}")
        sys.path.insert(0, os.path.dirname(path))
        mod_name = os.path.splitext(os.path.basename(path))[0]
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"cannot load {target}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        module_spec.loader.exec_module(module)
    else:
        sys.path.insert(0, os.getcwd())
        module = importlib.import_module(target)
    app = getattr(module, name, None)
    if not callable(app):
        raise ConfigError(f"{target} has no callable {name!r}")
    return app  # type: ignore[no-any-return]


def serve(config: Config) -> int:
    """Serve until SIGTERM/SIGINT: one process, or a master and its workers."""
    from geows import sharedarea

    # Shared areas exist before any fork, so every worker maps the same pages.
    sharedarea.setup([int(pages) for pages in config.sharedarea])
    if config.processes > 1:
        from geows.workers import Master

        return Master(config).run()
    return run_worker(config)


def run_worker(
    config: Config,
    listeners: Optional[list[tuple[Listener, socket.socket]]] = None,
    *,
    hub_address: Optional[str] = None,
    on_ready: Optional[Callable[[], None]] = None,
    worker_id: int = 1,
) -> int:
    """Run one server process until SIGTERM/SIGINT; the exit status.

    ``listeners``: sockets a master bound (else bind the config's here);
    ``hub_address``: the master's channel hub, for workers; ``on_ready`` is
    called once the server accepts; ``worker_id``: this worker's number,
    1 to ``--processes`` (``uwsgi.worker_id()``).
    """
    # Patch before anything the app imports can bind blocking primitives.
    if config.monkey_patch:
        from gevent import monkey

        monkey.patch_all()
    import gevent

    from geows import channels, uwsgi_compat
    from geows.keepalive import Registry
    from geows.server import Server
    from geows.wsgi import Settings

    sys.modules.setdefault("uwsgi", uwsgi_compat)
    uwsgi_compat.opt.update(config.uwsgi_opt())
    uwsgi_compat.numproc = config.processes
    uwsgi_compat._worker_id = worker_id
    hub = channels.make_hub(config.channels, hub_address=hub_address)
    channels.set_hub(hub)
    hub.start()
    assert config.app is not None
    app = load_app(config.app, config.callable)
    # What is loaded by now lives as long as the process: the cyclic GC
    # need not walk it again at every full collection (gc.freeze).
    gc.freeze()
    wanted = config.listeners()
    timeouts = config.timeouts()
    first = wanted[0].address
    host, port = first if isinstance(first, tuple) else ("localhost", 80)
    settings = Settings(
        app=app,
        limits=config.limits(),
        timeouts=timeouts,
        header_timeout=config.http_header_timeout,
        tls_handshake_timeout=config.tls_handshake_timeout,
        max_body=config.limit_post or None,
        access_log=not config.disable_logging,
        server_name=host,
        server_port=str(port),
        registry=Registry(timeouts),
        multiprocess=config.processes > 1,
        routes=config.routes(),
        route_timeout=config.route_timeout,
        trusted_proxies=config.trusted(),
        forwarded_header=config.forwarded_header,
        origins=config.origin_policy(),
        allow_missing_origin=config.websockets_allow_missing_origin,
    )
    server = Server(
        settings,
        list(listeners) if listeners is not None else list(wanted),
        max_connections=config.max_connections,
    )
    server.start()
    if on_ready is None:  # a master announces once all its workers are ready
        announce(config.app, server.listeners)
    stopping: list[gevent.Greenlet] = []

    def on_signal(signum: int) -> None:
        if stopping:
            return
        log.info(
            "%s: stopping (grace %.0fs)",
            signal.Signals(signum).name,
            config.shutdown_timeout,
        )
        stopping.append(gevent.spawn(server.stop, config.shutdown_timeout))

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, on_signal, signum)
    if on_ready is not None:
        on_ready()
    server.serve_forever()
    if stopping:
        stopping[0].join()
    hub.close()
    log.info("geows stopped")
    return 0


def announce(app: str, listeners: list[Listener]) -> None:
    """Log where the app is served, one line per listener (tests read these)."""
    for listener in listeners:
        log.info("geows serving %s on %s", app, listener.url())


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``geows`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.app_positional:
        args.app = args.app_positional
    try:
        config = Config.from_sources(args, args.ini)
        logging.basicConfig(
            level=config.log_level.upper(),
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
        config.validate()
        return serve(config)
    except ConfigError as exc:
        parser.exit(2, f"geows: {exc}\n")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
