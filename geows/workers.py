"""Master: the supervisor of ``geows serve --processes N``.

The master is a plain process: it never imports the app nor gevent, and it
stays single-threaded so that forking is safe. It

* binds the listeners before forking (with ``--http HOST:0`` it resolves
  the port once, so every worker and every later generation share it);
  with ``--reuse-port`` each worker binds its own ``SO_REUSEPORT`` socket
  instead, and the master keeps one bound, never listening, to hold the
  port;
* forks the channel hub (:mod:`geows.channels.master`) unless
  ``--channels`` names a backend, and restarts it if it dies;
* forks N workers, each of which monkey-patches, loads the app and serves
  through :func:`geows.cli.run_worker`; a worker tells the master it
  accepts by writing one byte to its *readiness pipe*;
* restarts a worker that dies, with a growing delay when workers die soon
  after they start, and gives up (exit status 1) when one slot fails
  :data:`MAX_FAST_FAILURES` times in a row;
* on SIGTERM/SIGINT, sends SIGTERM to every worker (each closes its
  websockets with 1001 and drains for ``--shutdown-timeout``), SIGKILLs
  those still running :data:`KILL_MARGIN` seconds after that, stops the
  hub and exits 0;
* on SIGHUP, reloads gracefully: it forks a new generation of N workers and,
  as each one is ready, sends SIGTERM to one old worker. The listening
  sockets stay open in the master all along, so no connection is refused
  and the number of accepting workers never drops.

Its loop waits in :mod:`selectors` on the readiness pipes and a pipe fed by
:func:`signal.set_wakeup_fd`; it wakes for signals, readiness and timers only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import Any, NoReturn, Optional

from geows.config import Config
from geows.listeners import BACKLOG, Listener, bind

__all__ = ["KILL_MARGIN", "MAX_FAST_FAILURES", "MIN_UPTIME", "Master"]

log = logging.getLogger("geows")

#: A worker that exits sooner than this after it started failed "fast".
MIN_UPTIME = 2.0
#: Fast failures in a row (of one worker slot) after which the master gives up.
MAX_FAST_FAILURES = 5
#: Seconds after ``--shutdown-timeout`` before lingering workers are killed.
KILL_MARGIN = 5.0
#: Seconds the hub has to exit once the workers are gone.
HUB_STOP_TIMEOUT = 2.0

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


def describe_exit(code: int) -> str:
    """``os.waitstatus_to_exitcode`` result in words."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"exit status {code}: killed by {name}"
    return f"exit status {code}"


def backoff(failures: int) -> float:
    """Seconds to wait before restarting after ``failures`` fast failures."""
    if failures <= 1:
        return 0.0
    return float(min(0.1 * 2 ** (failures - 2), 5.0))


@dataclasses.dataclass(eq=False)
class Worker:
    """One forked worker process, as the master tracks it."""

    pid: int
    slot: int
    generation: int
    ready_fd: Optional[int]
    started: float
    ready_at: Optional[float] = None
    retiring: bool = False
    proven: bool = False  # ran MIN_UPTIME after it was ready


class Master:
    """Supervises ``config.processes`` workers; :meth:`run` until stopped."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.size = config.processes
        self.pid = os.getpid()
        self.listeners: list[socket.socket] = []
        self.port_holds: list[socket.socket] = []
        #: What each listener speaks, with the port it bound (same order).
        self.bound: list[Listener] = []
        self.workers: dict[int, Worker] = {}
        self.serving: list[Optional[Worker]] = [None] * self.size
        self.starting: list[Optional[Worker]] = [None] * self.size
        self.respawn_at: dict[int, float] = {}
        self.failures = [0] * self.size
        self.generation = 0
        self.announced = False
        self.reloading = False
        self.reload_failed = 0  # slots where the reload's workers cannot start
        self.reload_queued = False
        self.stopping = False
        self.stop_deadline: Optional[float] = None
        self.status = 0
        self.hub_dir: Optional[str] = None
        self.hub_address: Optional[str] = None
        self.hub_listener: Optional[socket.socket] = None
        self.hub_pid: Optional[int] = None
        self.hub_started = 0.0
        self.hub_failures = 0
        self.hub_respawn_at: Optional[float] = None
        self.hub_deadline: Optional[float] = None
        self._selector = selectors.DefaultSelector()
        self._sig_r = -1
        self._sig_w = -1
        self._old_handlers: dict[int, Any] = {}

    # -- main loop ---------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (0), or until workers cannot start (1)."""
        try:
            self._bind()
        except OSError as exc:
            log.error("geows: cannot listen on %s: %s", self._http_text(), exc)
            self._close_sockets()
            return 1
        self._install_signals()
        try:
            if not self.config.channels:
                try:
                    self._start_hub()
                except OSError as exc:
                    log.error("geows: cannot start the channel hub: %s", exc)
                    return 1
            for slot in range(self.size):
                self.starting[slot] = self._spawn(slot)
            log.info(
                "master %d: starting %d workers (SIGHUP reloads, SIGTERM stops)",
                self.pid,
                self.size,
            )
            self._loop()
        finally:
            self._cleanup()
        log.info("geows stopped")
        return self.status

    def _loop(self) -> None:
        while True:
            for key, _ in self._selector.select(self._timeout()):
                if key.fd == self._sig_r:
                    self._read_signals()
                else:
                    self._on_ready_pipe(key.data)
            self._reap()
            self._tick()
            if self.stopping and not self.workers and self.hub_pid is None:
                return

    def _timeout(self) -> float:
        now = time.monotonic()
        candidates: list[Optional[float]]
        if self.stopping:
            candidates = [self.stop_deadline, self.hub_deadline]
        else:
            candidates = [*self.respawn_at.values(), self.hub_respawn_at]
            candidates += [
                worker.started + MIN_UPTIME
                for worker in self.serving
                if worker is not None and not worker.proven
            ]
        deadlines = [at for at in candidates if at is not None]
        if not deadlines:
            return 5.0
        return max(0.0, min(min(deadlines) - now, 5.0))

    def _tick(self) -> None:
        now = time.monotonic()
        if self.stopping:
            self._tick_stopping(now)
            return
        for slot, at in list(self.respawn_at.items()):
            if at <= now:
                del self.respawn_at[slot]
                if self.starting[slot] is None:
                    self.starting[slot] = self._spawn(slot)
        for slot, worker in enumerate(self.serving):
            if (
                worker is not None
                and not worker.proven
                and now - worker.started >= MIN_UPTIME
            ):
                worker.proven = True
                self.failures[slot] = 0
        if self.hub_respawn_at is not None and self.hub_respawn_at <= now:
            self.hub_respawn_at = None
            self._spawn_hub()
        if self.reloading and not any(self.starting) and not self.respawn_at:
            self.reloading = False
            if self.reload_failed:
                log.error(
                    "reload abandoned (generation %d): workers of earlier "
                    "generations keep serving in %d slots",
                    self.generation,
                    self.reload_failed,
                )
            else:
                log.info("reload complete (generation %d)", self.generation)
            if self.reload_queued:
                self.reload_queued = False
                self._start_reload("queued SIGHUP")

    def _tick_stopping(self, now: float) -> None:
        if self.workers:
            if self.stop_deadline is not None and now >= self.stop_deadline:
                self.stop_deadline = None
                log.warning(
                    "%d workers still running %.0fs after SIGTERM; killing them",
                    len(self.workers),
                    self.config.shutdown_timeout + KILL_MARGIN,
                )
                for worker in self.workers.values():
                    self._kill(worker.pid, signal.SIGKILL)
            return
        if self.hub_pid is None:
            return
        if self.hub_deadline is None:
            self._kill(self.hub_pid, signal.SIGTERM)
            self.hub_deadline = now + HUB_STOP_TIMEOUT
        elif now >= self.hub_deadline:
            log.warning("channel hub %d did not exit; killing it", self.hub_pid)
            self._kill(self.hub_pid, signal.SIGKILL)
            self.hub_deadline = now + 60.0

    # -- signals -----------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._sig_r, self._sig_w = os.pipe()
        for fd in (self._sig_r, self._sig_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._sig_w, warn_on_full_buffer=False)
        for signum in _SIGNALS:
            self._old_handlers[signum] = signal.signal(signum, _noop_handler)
        self._selector.register(self._sig_r, selectors.EVENT_READ, None)

    def _restore_signals(self) -> None:
        if self._sig_w < 0:
            return
        signal.set_wakeup_fd(-1)
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        os.close(self._sig_r)
        os.close(self._sig_w)
        self._sig_r = self._sig_w = -1

    def _read_signals(self) -> None:
        try:
            data = os.read(self._sig_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._begin_stop(signal.Signals(signum).name, signum)
            elif signum == signal.SIGHUP:
                self._request_reload()
            # SIGCHLD: the loop reaps after every wake-up.

    def _begin_stop(self, why: str, signum: Optional[int] = None) -> None:
        if self.stopping:
            if signum == signal.SIGINT:
                log.warning("SIGINT again: killing %d workers now", len(self.workers))
                for worker in self.workers.values():
                    self._kill(worker.pid, signal.SIGKILL)
            return
        self.stopping = True
        self.reloading = self.reload_queued = False
        self.respawn_at.clear()
        self.hub_respawn_at = None
        timeout = self.config.shutdown_timeout
        log.info(
            "%s: stopping %d workers (grace %.0fs)", why, len(self.workers), timeout
        )
        self.stop_deadline = time.monotonic() + timeout + KILL_MARGIN
        for worker in self.workers.values():
            self._kill(worker.pid, signal.SIGTERM)

    def _request_reload(self) -> None:
        if self.stopping:
            return
        if self.reloading or any(self.starting) or self.respawn_at:
            if self.reload_queued:
                log.info("SIGHUP: a reload is already queued; ignored")
            else:
                log.info("SIGHUP: workers are starting; reloading once they are up")
                self.reload_queued = True
            return
        self._start_reload("SIGHUP")

    def _start_reload(self, why: str) -> None:
        self.generation += 1
        self.reloading = True
        self.reload_failed = 0
        log.info(
            "%s: reloading: starting %d new workers (generation %d)",
            why,
            self.size,
            self.generation,
        )
        for slot in range(self.size):
            self.starting[slot] = self._spawn(slot)

    # -- workers -----------------------------------------------------------------------

    def _spawn(self, slot: int) -> Optional[Worker]:
        ready_r, ready_w = os.pipe()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(ready_r)
            os.close(ready_w)
            self.failures[slot] += 1
            delay = max(backoff(self.failures[slot]), 1.0)
            log.error("cannot fork a worker: %s; retrying in %.1fs", exc, delay)
            self.respawn_at[slot] = time.monotonic() + delay
            return None
        if pid == 0:
            self._worker_main(ready_r, ready_w, mask, slot)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(ready_w)
        worker = Worker(pid, slot, self.generation, ready_r, time.monotonic())
        self.workers[pid] = worker
        self._selector.register(ready_r, selectors.EVENT_READ, worker)
        log.info(
            "worker %d started (slot %d, generation %d)", pid, slot, self.generation
        )
        return worker

    def _worker_main(
        self, ready_r: int, ready_w: int, mask: Any, slot: int
    ) -> NoReturn:
        """The forked worker: serve with the app loaded here, then exit."""
        status = 1
        try:
            os.close(ready_r)
            self._child_signals(signal.SIG_IGN)
            self._close_master_fds(keep_listeners=True)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            socks = list(self.listeners)
            if self.config.reuse_port:
                socks = [bind(listener, reuse_port=True) for listener in self.bound]
            listeners = list(zip(self.bound, socks))
            from geows.cli import run_worker

            if self.config.monkey_patch:
                # run_worker patches too (a no-op then); the workaround below
                # imports geows.server, which must see the patched modules.
                from gevent import monkey

                monkey.patch_all()
            status = run_worker(
                self.config,
                listeners,
                hub_address=self.hub_address,
                on_ready=_ReadyNotice(ready_w, self.pid),
                worker_id=slot + 1,
            )
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("worker %d failed to start or crashed", os.getpid())
            status = 1
        finally:
            _exit(status)

    def _on_ready_pipe(self, worker: Worker) -> None:
        try:
            data = os.read(worker.ready_fd, 16) if worker.ready_fd is not None else b""
        except BlockingIOError:
            return
        self._close_ready(worker)
        if not data:
            return  # died before it was ready: the reaper tells the rest
        worker.ready_at = time.monotonic()
        slot = worker.slot
        if self.stopping or self.starting[slot] is not worker:
            return
        self.starting[slot] = None
        old = self.serving[slot]
        self.serving[slot] = worker
        log.info("worker %d ready (slot %d)", worker.pid, slot)
        if old is not None:
            old.retiring = True
            log.info(
                "worker %d (generation %d) replaced: stopping it gracefully",
                old.pid,
                old.generation,
            )
            self._kill(old.pid, signal.SIGTERM)
        if not self.announced and all(self.serving):
            self.announced = True
            from geows.cli import announce

            assert self.config.app is not None
            announce(self.config.app, self.bound)
            log.info("master %d: %d workers ready", self.pid, self.size)

    def _close_ready(self, worker: Worker) -> None:
        fd, worker.ready_fd = worker.ready_fd, None
        if fd is not None:
            self._selector.unregister(fd)
            os.close(fd)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if pid == self.hub_pid:
                self._hub_exited(code)
                continue
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self._worker_exited(worker, code)

    def _worker_exited(self, worker: Worker, code: int) -> None:
        self._close_ready(worker)
        slot = worker.slot
        if self.serving[slot] is worker:
            self.serving[slot] = None
        was_starting = self.starting[slot] is worker
        if was_starting:
            self.starting[slot] = None
        if self.stopping or worker.retiring:
            log.info("worker %d exited (%s)", worker.pid, describe_exit(code))
            return
        uptime = time.monotonic() - worker.started
        if was_starting or uptime < MIN_UPTIME:
            self.failures[slot] += 1
        else:
            self.failures[slot] = 0
        if was_starting:
            log.error(
                "worker %d exited before it was ready (%s)",
                worker.pid,
                describe_exit(code),
            )
        else:
            log.warning(
                "worker %d exited unexpectedly (%s); starting a replacement",
                worker.pid,
                describe_exit(code),
            )
        failures = self.failures[slot]
        if failures >= MAX_FAST_FAILURES:
            current = self.serving[slot]
            if current is not None:
                log.error(
                    "reload: new workers failed to start %d times in a row; "
                    "worker %d (generation %d) keeps serving",
                    failures,
                    current.pid,
                    current.generation,
                )
                self.failures[slot] = 0
                self.reload_failed += 1
                return
            log.error(
                "workers keep failing: %d exited in a row within %.0fs of "
                "starting (last: %s); giving up",
                failures,
                MIN_UPTIME,
                describe_exit(code),
            )
            self.status = 1
            self._begin_stop("giving up")
            return
        if self.starting[slot] is not None:
            return  # a worker of the new generation takes the slot
        delay = backoff(failures)
        if delay:
            log.info(
                "restarting worker slot %d in %.1fs (%d fast failures)",
                slot,
                delay,
                failures,
            )
        self.respawn_at[slot] = time.monotonic() + delay

    def _kill(self, pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    # -- the channel hub ---------------------------------------------------------------

    def _start_hub(self) -> None:
        self.hub_dir = tempfile.mkdtemp(prefix="geows-")  # mode 0700
        if len(self.hub_dir) > 90:  # a Unix socket path is short (108 bytes)
            os.rmdir(self.hub_dir)
            self.hub_dir = tempfile.mkdtemp(prefix="geows-", dir="/tmp")
        self.hub_address = os.path.join(self.hub_dir, "hub.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.hub_address)
        sock.listen(BACKLOG)
        self.hub_listener = sock
        self._spawn_hub()

    def _spawn_hub(self) -> None:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            log.error("cannot fork the channel hub: %s; retrying", exc)
            self.hub_respawn_at = time.monotonic() + 1.0
            return
        if pid == 0:
            self._hub_main(mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.hub_pid = pid
        self.hub_started = time.monotonic()
        log.info("channel hub %d started on %s", pid, self.hub_address)

    def _hub_main(self, mask: Any) -> NoReturn:
        status = 1
        try:
            # Ctrl-C reaches the whole process group: the hub stays up until
            # the workers have drained and the master stops it with SIGTERM.
            self._child_signals(signal.SIG_IGN, interrupt=signal.SIG_IGN)
            self._close_master_fds(keep_listeners=False)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            from geows.channels.master import HubServer

            assert self.hub_listener is not None
            HubServer(self.hub_listener).serve_forever(parent_pid=self.pid)
            # Only an orphaned hub gets here (SIGTERM ends it at once): the
            # master cannot remove the socket's directory any more.
            if self.hub_dir is not None:
                shutil.rmtree(self.hub_dir, ignore_errors=True)
            status = 0
        except BaseException:
            log.exception("channel hub crashed")
        finally:
            _exit(status)

    def _hub_exited(self, code: int) -> None:
        self.hub_pid = None
        self.hub_deadline = None
        if self.stopping:
            log.debug("channel hub exited (%s)", describe_exit(code))
            return
        if time.monotonic() - self.hub_started < MIN_UPTIME:
            self.hub_failures += 1
        else:
            self.hub_failures = 0
        delay = backoff(self.hub_failures)
        log.warning(
            "channel hub exited unexpectedly (%s); restarting it%s",
            describe_exit(code),
            f" in {delay:.1f}s" if delay else "",
        )
        self.hub_respawn_at = time.monotonic() + delay

    # -- sockets and children ----------------------------------------------------------

    def _http_text(self) -> str:
        return ", ".join(listener.spec for listener in self.config.listeners())

    def _bind(self) -> None:
        # With --reuse-port each worker binds its own socket: the master
        # holds one bound, never listening, so port 0 resolves once and the
        # port stays ours between generations.
        reuse = self.config.reuse_port
        for listener in self.config.listeners():
            if reuse and listener.is_unix:
                raise OSError(f"--reuse-port needs TCP listeners: {listener.spec}")
            sock = bind(listener, reuse_port=reuse, listen=not reuse)
            (self.port_holds if reuse else self.listeners).append(sock)
            if listener.is_unix:
                self.bound.append(listener)
            else:
                host = listener.address[0]  # type: ignore[index]
                self.bound.append(listener.with_address((host, sock.getsockname()[1])))

    def _child_signals(self, hangup: Any, interrupt: Any = signal.SIG_DFL) -> None:
        """In a forked child: the master's handlers and wake-up fd are gone."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGHUP, hangup)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def _close_master_fds(self, *, keep_listeners: bool) -> None:
        """In a forked child: close what only the master should hold."""
        self._selector.close()
        os.close(self._sig_r)
        os.close(self._sig_w)
        for worker in self.workers.values():
            if worker.ready_fd is not None:
                os.close(worker.ready_fd)
        for sock in self.port_holds:
            sock.close()
        if not keep_listeners:
            for sock in self.listeners:
                sock.close()
        elif self.hub_listener is not None:
            self.hub_listener.close()

    def _close_sockets(self) -> None:
        for sock in [*self.listeners, *self.port_holds]:
            sock.close()
        for listener in self.bound:
            if isinstance(listener.address, str):
                try:
                    os.unlink(listener.address)
                except OSError:
                    pass
        self.bound = []
        self.listeners = []
        self.port_holds = []
        if self.hub_listener is not None:
            self.hub_listener.close()
            self.hub_listener = None
        if self.hub_dir is not None:
            shutil.rmtree(self.hub_dir, ignore_errors=True)
            self.hub_dir = None

    def _cleanup(self) -> None:
        """On the way out (also after an unexpected error in the master)."""
        for pid in [*self.workers, self.hub_pid]:
            if pid is not None:
                self._kill(pid, signal.SIGKILL)
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        self.workers.clear()
        self.hub_pid = None
        self._restore_signals()
        self._close_sockets()
        self._selector.close()


class _ReadyNotice:
    """``on_ready`` of a worker: tell the master, then watch that it lives."""

    def __init__(self, fd: int, master_pid: int) -> None:
        self.fd = fd
        self.master_pid = master_pid

    def __call__(self) -> None:
        import gevent

        try:
            os.write(self.fd, b"1")
        finally:
            os.close(self.fd)
        gevent.spawn(self._watch_master)

    def _watch_master(self) -> None:
        import gevent

        while os.getppid() == self.master_pid:
            gevent.sleep(1.0)
        log.error("worker %d: the master is gone; stopping", os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)


def _noop_handler(signum: int, frame: Any) -> None:
    """Signals reach the loop through the wake-up fd; nothing to do here."""


def _exit(status: int) -> NoReturn:
    """Leave a forked child without running the master's cleanup."""
    try:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)
