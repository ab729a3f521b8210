"""Config: the one schema behind the command line, ini files and ``--help``.

Each field carries its help text and its uWSGI spelling; argparse options
and the ini reader are generated from the fields, so the three never drift.
Sizes in KiB and times in seconds, as uWSGI spells them; :meth:`Config.limits`
turns them into the bytes the core uses.
"""

from __future__ import annotations

import argparse
import configparser
import logging
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Optional

from geows.forwarded import TrustedProxies
from geows.limits import Limits, Timeouts
from geows.listeners import Listener, ListenerError
from geows.origins import OriginPolicy
from geows.router import Route, parse_route

__all__ = ["Config", "ConfigError", "add_arguments"]

log = logging.getLogger("geows.config")

#: ``--forwarded-header`` values (``geows.forwarded.resolve``'s ``header``).
FORWARDED_HEADERS = ("x-forwarded-for", "forwarded", "auto")


class ConfigError(ValueError):
    """An option value or ini file we cannot use."""


def opt(default: Any, help: str, *aliases: str, metavar: Optional[str] = None) -> Any:
    """A Config field with its help and extra option names."""
    meta = {"help": help, "aliases": aliases, "metavar": metavar}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Config:
    """Every option of ``geows serve``."""

    app: Optional[str] = opt(
        None,
        "WSGI app: a .py file or a module, optionally module:callable",
        "wsgi-file",
        "module",
        "wsgi",
        metavar="APP",
    )
    callable: str = opt("application", "name of the WSGI callable in the app")
    http: list[str] = opt(
        [],
        "serve HTTP and WebSockets on HOST:PORT (repeatable; default 127.0.0.1:8000)",
        "http-socket",
        metavar="HOST:PORT",
    )
    https: list[str] = opt(
        [],
        "serve HTTPS and wss:// on HOST:PORT,CERT,KEY[,CIPHERS[,CA]] (repeatable)",
        "https-socket",
        metavar="HOST:PORT,CERT,KEY",
    )
    https_ca: Optional[str] = opt(
        None,
        "require TLS client certificates signed by this CA bundle (PEM)",
        metavar="FILE",
    )
    tls_handshake_timeout: float = opt(
        10.0,
        "seconds a client has to complete the TLS handshake",
        metavar="SECONDS",
    )
    uwsgi_socket: list[str] = opt(
        [],
        "speak the uwsgi protocol (nginx uwsgi_pass) on HOST:PORT or a Unix "
        "socket path (repeatable)",
        "socket",
        metavar="ADDRESS",
    )
    proxy_protocol: list[str] = opt(
        [],
        "expect a PROXY protocol v1/v2 header on these listeners (their "
        "address as given, or 'all'; repeatable)",
        metavar="ADDRESS",
    )
    trusted_proxies: list[str] = opt(
        [],
        "believe X-Forwarded-For/-Proto and Forwarded only from these peers: "
        "addresses, CIDR networks, 'unix', 'loopback', 'private' (comma-separated "
        "or repeated; default: nobody)",
        metavar="CIDR",
    )
    forwarded_header: str = opt(
        "x-forwarded-for",
        "which headers of a trusted proxy name the client: x-forwarded-for "
        "(with X-Forwarded-Proto, what nginx and HAProxy set), forwarded "
        "(RFC 7239) or auto (Forwarded when present); not auto by default, "
        "since a proxy passes on untouched the header it does not set, and "
        "a client's own Forwarded would then win",
        metavar="HEADER",
    )
    websockets_allowed_origins: list[str] = opt(
        [],
        "answer 403 to upgrades whose Origin is not one of these (exact, or "
        "patterns like https://*.example.com; comma-separated or repeated; "
        "default: any)",
        metavar="ORIGIN",
    )
    websockets_allow_missing_origin: bool = opt(
        False,
        "with --websockets-allowed-origins, also let upgrades without an "
        "Origin header through (non-browser clients: browsers always send one)",
    )
    route: list[str] = opt(
        [],
        "'REGEX ACTION': proxy requests whose PATH_INFO matches REGEX to ACTION, "
        "http:ADDRESS or uwsgi:ADDRESS[,MOD1,MOD2], ADDRESS being HOST:PORT or a "
        "Unix socket path (repeatable; first match wins)",
        metavar="'REGEX ACTION'",
    )
    route_timeout: float = opt(
        30.0,
        "seconds a routed backend has to connect and start its answer (then 504)",
        metavar="SECONDS",
    )
    http_websockets: bool = opt(
        False, "accepted for uWSGI compatibility: websockets are always on"
    )
    max_connections: int = opt(
        10000,
        "most connections served at once (one greenlet each)",
        "gevent",
        metavar="N",
    )
    websockets_ping_freq: float = opt(
        30.0,
        "seconds between keepalive pings (0 disables keepalive, and with it "
        "the detection of dead peers and stalled sends)",
        "websocket-ping-freq",
        metavar="SECONDS",
    )
    websockets_pong_tolerance: float = opt(
        10.0,
        "seconds without any frame after a ping before the peer is dead "
        "(uWSGI's 3 s drops healthy clients on slow links)",
        "websocket-pong-tolerance",
        metavar="SECONDS",
    )
    websockets_max_size: int = opt(
        1024,
        "largest message in KiB; bigger ones close with 1009 (0: no limit)",
        "websocket-max-size",
        metavar="KIB",
    )
    limit_post: int = opt(
        0,
        "largest request body in bytes; bigger ones get 413 (0: no limit)",
        metavar="BYTES",
    )
    websockets_close_timeout: float = opt(
        5.0, "seconds to wait for the peer's close frame", metavar="SECONDS"
    )
    http_header_timeout: float = opt(
        10.0,
        "seconds a client has to send a request head (and the longest idle keep-alive)",
        metavar="SECONDS",
    )
    shutdown_timeout: float = opt(
        10.0,
        "grace period on SIGTERM/SIGINT before open connections are cut",
        metavar="SECONDS",
    )
    processes: int = opt(
        1,
        "worker processes sharing the listeners (a master supervises them when > 1)",
        "workers",
        metavar="N",
    )
    reuse_port: bool = opt(False, "each worker binds its own socket with SO_REUSEPORT")
    channels: str = opt(
        "",
        "channel backend: memory:// (one process), redis://HOST:PORT/DB "
        "(many processes and machines); default: memory://, or the master's "
        "hub when --processes > 1",
        metavar="URL",
    )
    channel_backlog: int = opt(
        128,
        "KiB of channel messages a slow member may have queued before it "
        "is closed with 1008",
        metavar="KIB",
    )
    channel_slow_timeout: float = opt(
        10.0,
        "seconds a member may stay over --channel-backlog",
        metavar="SECONDS",
    )
    sharedarea: list[str] = opt(
        [],
        "create a shared memory area of PAGES pages (repeatable: ids 0, 1, ...)",
        metavar="PAGES",
    )
    disable_logging: bool = opt(False, "no access log lines")
    log_level: str = opt("info", "level of geows' own log", metavar="LEVEL")
    monkey_patch: bool = opt(
        True,
        "gevent.monkey.patch_all() before the app is imported "
        "(--no-monkey-patch to opt out)",
        "gevent-monkey-patch",
    )
    master: bool = opt(False, "accepted for uWSGI compatibility (ignored)")
    enable_threads: bool = opt(False, "accepted for uWSGI compatibility (ignored)")
    die_on_term: bool = opt(
        False, "accepted for uWSGI compatibility: SIGTERM always stops gracefully"
    )
    vacuum: bool = opt(False, "accepted for uWSGI compatibility (ignored)")

    # -- derived -------------------------------------------------------------

    def limits(self) -> Limits:
        """The core's Limits, in bytes."""
        size = self.websockets_max_size
        return Limits(
            max_message_size=size * 1024 if size > 0 else None,
            max_channel_backlog=self.channel_backlog * 1024,
        )

    def timeouts(self) -> Timeouts:
        """The core's Timeouts."""
        freq = self.websockets_ping_freq
        return Timeouts(
            ping_interval=freq if freq > 0 else None,
            pong_tolerance=self.websockets_pong_tolerance,
            close_timeout=self.websockets_close_timeout,
            slow_member_timeout=self.channel_slow_timeout,
        )

    def uwsgi_opt(self) -> dict[str, Any]:
        """``uwsgi.opt`` as uWSGI fills it: hyphenated names of the options
        given (differing from the default), values as strings, flags True.
        """
        opts: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value == _default(f) or value is None:
                continue
            name = f.name.replace("_", "-")
            if isinstance(value, bool):
                opts[name] = value
            elif isinstance(value, list):
                opts[name] = value[0] if len(value) == 1 else list(value)
            else:
                opts[name] = str(value)
        return opts

    def listeners(self) -> list[Listener]:
        """Every listener: ``--http``, ``--https`` and ``--uwsgi-socket``, in
        that order; ``127.0.0.1:8000`` over HTTP when none is given.
        """
        try:
            found = [Listener.http(a) for a in self.http]
            found += [Listener.https(a, self.https_ca) for a in self.https]
            found += [Listener.uwsgi(a) for a in self.uwsgi_socket]
            if not found:
                found = [Listener.http("127.0.0.1:8000")]
            wanted = {
                w.strip() for value in self.proxy_protocol for w in value.split(",")
            } - {""}
            if wanted:
                specs = {listener.spec for listener in found}
                unknown = wanted - specs - {"all"}
                if unknown:
                    raise ConfigError(
                        f"--proxy-protocol: no listener {sorted(unknown)[0]!r} "
                        f"(listeners: {', '.join(sorted(specs))})"
                    )
                found = [
                    replace(listener, proxy_protocol=True)
                    if "all" in wanted or listener.spec in wanted
                    else listener
                    for listener in found
                ]
        except ListenerError as exc:
            raise ConfigError(str(exc)) from None
        return found

    def trusted(self) -> Optional[TrustedProxies]:
        """``--trusted-proxies``, parsed; None when nobody is trusted."""
        try:
            trusted = TrustedProxies(self.trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"--trusted-proxies: {exc}") from None
        return trusted if trusted else None

    def origin_policy(self) -> Optional[OriginPolicy]:
        """``--websockets-allowed-origins``, parsed; None when any is allowed."""
        try:
            policy = OriginPolicy(
                self.websockets_allowed_origins,
                allow_missing=self.websockets_allow_missing_origin,
            )
        except ValueError as exc:
            raise ConfigError(f"--websockets-allowed-origins: {exc}") from None
        return policy if policy else None

    def routes(self) -> tuple[Route, ...]:
        """The ``--route`` options, parsed, in the order given."""
        found = []
        for text in self.route:
            try:
                found.append(parse_route(text))
            except ValueError as exc:
                raise ConfigError(f"--route {text!r}: {exc}") from None
        return tuple(found)

    def validate(self) -> None:
        """Refuse values that cannot work, with the option's name."""
        if not self.app:
            raise ConfigError("no app given: geows serve APP (or --wsgi-file / ini)")
        for name in ("websockets_pong_tolerance", "http_header_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0")
        if self.limit_post < 0 or self.websockets_max_size < 0:
            raise ConfigError("sizes must be >= 0 (0: no limit)")
        if self.processes < 1:
            raise ConfigError("--processes must be >= 1")
        if self.channel_backlog < 1:
            raise ConfigError("--channel-backlog must be >= 1")
        for pages in self.sharedarea:
            if not pages.isdigit() or int(pages) < 1:
                raise ConfigError(f"--sharedarea takes a number of pages: {pages!r}")
        if self.max_connections < 1:
            raise ConfigError("--max-connections must be >= 1")
        if self.https_ca and not self.https:
            raise ConfigError("--https-ca needs an --https listener")
        for name in ("tls_handshake_timeout", "route_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0")
        if self.forwarded_header not in FORWARDED_HEADERS:
            raise ConfigError(
                f"--forwarded-header must be one of {', '.join(FORWARDED_HEADERS)}, "
                f"not {self.forwarded_header!r}"
            )
        for listener in self.listeners():
            if listener.protocol == "https":
                _check_tls(listener)
        self.routes()
        self.trusted()
        self.origin_policy()

    # -- sources -------------------------------------------------------------

    @classmethod
    def from_sources(
        cls, args: argparse.Namespace, ini: Optional[str] = None
    ) -> Config:
        """Defaults, then the ini file, then the command line (which wins)."""
        config = cls()
        if ini:
            config.update(read_ini(ini))
        given = {
            f.name: getattr(args, f.name)
            for f in fields(cls)
            if getattr(args, f.name, None) is not None
        }
        config.update(given)
        return config

    def update(self, values: dict[str, Any]) -> None:
        """Set fields from already-typed values."""
        for name, value in values.items():
            if isinstance(getattr(self, name), list) and not isinstance(value, list):
                value = [value]
            setattr(self, name, value)


_FIELDS = {f.name: f for f in fields(Config)}


def _check_tls(listener: Listener) -> None:
    """Load an https listener's certificate, key, ciphers and CA now, so that
    a bad one stops ``geows`` with its option instead of every worker.
    """
    import ssl

    from geows.tls import server_context

    try:
        server_context(listener, ssl.SSLContext)  # stdlib: no gevent in a master
    except (OSError, ValueError) as exc:
        files = ", ".join(
            path
            for path in (listener.certfile, listener.keyfile, listener.cafile)
            if path
        )
        raise ConfigError(f"--https {listener.spec} ({files}): {exc}") from None


def _default(f: Any) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()


def _type_of(f: Any) -> str:
    return str(f.type)


def _names(f: Any) -> list[str]:
    return [f.name.replace("_", "-"), *f.metadata["aliases"]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per Config field (with its aliases) to ``parser``."""
    for f in fields(Config):
        names = _names(f)
        meta = f.metadata
        default = _default(f)
        kind = _type_of(f)
        helptext = meta["help"]
        if f.name == "app":
            parser.add_argument(
                "app_positional", nargs="?", metavar="APP", help=helptext
            )
            parser.add_argument(
                *("--" + n for n in names), dest="app", help=argparse.SUPPRESS
            )
            continue
        opts = ["--" + n for n in names]
        if kind == "bool":
            parser.add_argument(
                *opts,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{helptext} (default: {'on' if default else 'off'})",
            )
        elif kind.startswith("list"):
            parser.add_argument(
                *opts,
                dest=f.name,
                action="append",
                default=None,
                metavar=meta["metavar"],
                help=helptext,
            )
        else:
            conv = {"int": int, "float": float}.get(kind, str)
            parser.add_argument(
                *opts,
                dest=f.name,
                type=conv,
                default=None,
                metavar=meta["metavar"],
                help=f"{helptext} (default: {default})",
            )


_TRUE = {"1", "true", "yes", "on", ""}
_FALSE = {"0", "false", "no", "off"}


def _convert(f: Any, raw: str) -> Any:
    kind = _type_of(f)
    try:
        if kind == "bool":
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(
            f"{f.name.replace('_', '-')}: not a {kind}: {raw!r}"
        ) from None
    return raw.strip()


def read_ini(path: str) -> dict[str, Any]:
    """Options from the ``[geows]`` (else ``[uwsgi]``) section of an ini file.

    Keys use the option names or their uWSGI aliases; a key repeated on
    several lines (uWSGI style) is kept for list options. Options geows does
    not know are logged and skipped, so a uWSGI file mostly just works.
    """
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, allow_no_value=True, delimiters=("=",)
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(_MultiKey(fh))
    except (OSError, configparser.Error) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    section = "geows" if parser.has_section("geows") else "uwsgi"
    if not parser.has_section(section):
        raise ConfigError(f"{path} has no [geows] or [uwsgi] section")
    lookup = {n: f for f in fields(Config) for n in _names(f)}
    values: dict[str, Any] = {}
    for key, raw in parser.items(section):
        name = key.split("\x00")[0].strip().replace("_", "-")
        f = lookup.get(name)
        if f is None:
            log.warning("%s: option %r is not supported by geows; ignored", path, name)
            continue
        value = _convert(f, raw if raw is not None else "")
        if _type_of(f).startswith("list"):
            values.setdefault(f.name, []).append(value)
        else:
            values[f.name] = value
    return values


class _MultiKey:
    """Feeds configparser with repeated keys made unique (uWSGI repeats keys)."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self._seen: dict[str, int] = {}

    def __iter__(self) -> Any:
        for line in self._fh:
            stripped = line.lstrip()
            if "=" in line and stripped[:1] not in ("#", ";", "["):
                key, rest = line.split("=", 1)
                name = key.strip()
                count = self._seen.get(name, 0)
                self._seen[name] = count + 1
                if count:
                    line = f"{name}\x00{count}={rest}"
            elif stripped.startswith("["):
                self._seen = {}
            yield line
