"""Running an ASGI app for people on a network: uvicorn in pre-forked processes that shed what they
cannot serve, under a supervisor that Ctrl-C always stops.

    with StopSignals() as stop:          # from the first instant: Ctrl-C is never lost
        ...load what is served, bind the socket...
        run(make_app, sock, processes=2, limits=Limits(), stop=stop)

The supervisor (the calling process) serves nothing: it starts `processes` workers, each of which calls
`make_app()` itself (so each loads what it serves) and runs uvicorn on the one listening socket, the
kernel handing each new connection to one of them. Several processes rather than threads, because
preparing a picture is numpy, SciPy and Pillow code that holds Python's global lock much of the time:
threads in one process mostly take turns. A worker that dies is replaced.

Each worker's connections are guarded (`GuardedProtocol`, uvicorn's httptools protocol with limits):
a connection that sends nothing is closed after `idle_timeout`; a request's line and headers must
arrive within `head_timeout` and hold at most `max_head` bytes (431 beyond; nothing more is buffered);
its body must arrive within `body_timeout` (408); at most `max_connections` are held, and a new one
beyond that closes the connection that has waited longest for a request (idle or dribbling its
headers), so that idle and slow clients never lock out the others.

Stopping: SIGINT (Ctrl-C) or SIGTERM to the supervisor, at any moment. Workers ignore SIGINT (a
terminal sends it to the whole process group) and stop on the supervisor's SIGTERM: they finish the
requests in flight (up to `graceful` seconds) and exit; a second Ctrl-C kills them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import json
import multiprocessing
import re
import signal
import socket
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable

from ..base.errors import MnistlabError
from ..base.system import allow_open_files, end_with_parent

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
CRASH_WINDOW = 5.0  # seconds: a worker that dies sooner than this after its start failed to start ...
CRASH_LIMIT = 3  # ... and after this many such failures in a row the supervisor gives up


@dataclass(frozen=True)
class Limits:
    """What one client may hold of a worker process (times in seconds, sizes in bytes)."""

    idle_timeout: float = 5.0  # a connection without a request in progress, new or kept alive
    head_timeout: float = 10.0  # from a request's first byte to the end of its headers
    body_timeout: float = 12.0  # from the end of the headers to the end of the body
    max_head: int = 32 * 1024  # request line and headers (browsers send 0.5 to 2 KiB; cookies add some)
    max_connections: int = 512  # per process; kept below the open-file limit
    graceful: float = 5.0  # on stop: time for the requests in flight to finish


class ServeError(MnistlabError):
    """The server processes cannot run."""


# ---------------------------------------------------------------------------
# Signals

class StopSignals:
    """SIGINT and SIGTERM recorded as a flag from `with` on, so that none is ever lost.

    Until `run` starts serving, the handler also raises KeyboardInterrupt, so slow start-up work
    (loading models) stops at once; where Python swallows that exception (inside a finaliser or a
    callback it only prints "Exception ignored") the flag still holds, and `run` stops before serving.
    While serving, the handler only sets the flag and wakes the supervisor through a socket.
    """

    def __init__(self):
        self.received: int | None = None
        self.count = 0
        self.interrupting = True
        self._previous: dict[int, Any] = {}
        self._wakeup_read, self._wakeup_write = socket.socketpair()
        self._wakeup_write.setblocking(False)
        self._wakeup_read.setblocking(False)
        self._previous_wakeup = -1

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        self.count += 1
        if self.interrupting:
            raise KeyboardInterrupt

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        self._previous_wakeup = signal.set_wakeup_fd(self._wakeup_write.fileno())
        return self

    def __exit__(self, *exc: Any) -> None:
        signal.set_wakeup_fd(self._previous_wakeup)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._wakeup_read.close()
        self._wakeup_write.close()

    @property
    def requested(self) -> bool:
        return self.received is not None

    def fileno(self) -> int:
        """Readable when a signal arrived (for `multiprocessing.connection.wait`)."""
        return self._wakeup_read.fileno()

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self._wakeup_read.recv(512):
                pass


# ---------------------------------------------------------------------------
# The supervisor

def run(make_app: Callable[[], Any], sock: socket.socket, processes: int, limits: Limits,
        stop: StopSignals) -> None:
    """Serve the app from `processes` workers on the listening `sock` until SIGINT or SIGTERM."""
    stop.interrupting = False
    if stop.requested:  # Ctrl-C came during start-up and was swallowed somewhere: honour it now
        return
    # fork: workers start in a fraction of a second and share the modules already imported. Elsewhere
    # (macOS, Windows) forking a process that imported torch is unsafe: each worker starts afresh.
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    workers: dict[int, tuple[Any, float]] = {}  # number -> (process, start time)
    failures = 0

    def start(number: int) -> None:
        # Workers start with the stop signals blocked: they set their own handlers first, then unblock.
        _mask(signal.SIG_BLOCK)
        try:
            process = context.Process(target=_worker, args=(make_app, sock, limits),
                                      name=f"mnistlab-serve-{number}")
            process.start()
        finally:
            _mask(signal.SIG_UNBLOCK)
        workers[number] = (process, time.monotonic())

    try:
        for number in range(processes):
            start(number)
        while not stop.requested:
            wait([process.sentinel for process, _ in workers.values()] + [stop], timeout=None)
            stop.drain()
            for number, (process, started) in list(workers.items()):
                if stop.requested or process.is_alive():
                    continue
                process.join()
                failures = failures + 1 if time.monotonic() - started < CRASH_WINDOW else 0
                if failures >= CRASH_LIMIT:
                    raise ServeError(f"the server processes keep failing as they start (exit status "
                                     f"{process.exitcode}; the reason is printed above)")
                start(number)
    finally:
        _stop_workers([process for process, _ in workers.values()], limits.graceful + 2, stop)


def _mask(how: int) -> None:
    if hasattr(signal, "pthread_sigmask"):  # not on Windows, where a worker starts afresh anyway
        signal.pthread_sigmask(how, STOP_SIGNALS)


def _stop_workers(processes: list, timeout: float, stop: StopSignals) -> None:
    """SIGTERM to every worker; after `timeout` seconds, or at a further Ctrl-C, SIGKILL."""
    count = stop.count
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + timeout
    while any(p.is_alive() for p in processes) and time.monotonic() < deadline and stop.count == count:
        wait([p.sentinel for p in processes if p.is_alive()] + [stop], timeout=deadline - time.monotonic())
        stop.drain()
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join()


# ---------------------------------------------------------------------------
# A worker

def _worker(make_app: Callable[[], Any], sock: socket.socket, limits: Limits) -> None:
    """One server process: its own app, uvicorn on the shared socket, until SIGTERM."""
    import uvicorn

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # until uvicorn's server takes it over
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)  # the supervisor's, inherited through fork
    if not end_with_parent():  # the supervisor died before the request took effect: no orphan serves the port
        sys.exit(0)
    _mask(signal.SIG_UNBLOCK)
    try:
        app = make_app()
        config = uvicorn.Config(app, http=guarded_protocol(limits, _open_files()), log_level="error",
                                access_log=False, timeout_keep_alive=limits.idle_timeout,
                                timeout_graceful_shutdown=limits.graceful)
        # What start-up built (modules, models, the app) lives as long as the process: frozen, the
        # garbage collector's full collections no longer walk it.
        gc.collect()
        gc.freeze()
        _worker_server(config).run(sockets=[sock])
    except MnistlabError as e:
        print(f"mnistlab serve: error: {e}", file=sys.stderr, flush=True)
        sys.exit(3)


def _open_files() -> int:
    """Connections this process may hold: its open-file limit (raised as far as the system lets) less a margin."""
    return max(16, allow_open_files(65536) - 64)


def _worker_server(config):
    """A uvicorn server for `config` (a class made here: uvicorn is imported when serving, not before)."""
    import uvicorn

    class WorkerServer(uvicorn.Server):
        """uvicorn's server, stopped by SIGTERM only: Ctrl-C belongs to the supervisor."""

        @contextlib.contextmanager
        def capture_signals(self):
            def stop(signum: int, frame: Any) -> None:
                self.should_exit = True

            previous = signal.signal(signal.SIGTERM, stop)
            try:
                yield
            finally:
                signal.signal(signal.SIGTERM, previous)

    return WorkerServer(config)


# ---------------------------------------------------------------------------
# Guarded connections

def guarded_protocol(limits: Limits, open_files: int | None = None) -> type:
    """uvicorn's httptools protocol with `limits` (see the module docstring), as a class for
    `uvicorn.Config(http=...)`; connections are counted per class, so make one per server."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    cap = limits.max_connections if open_files is None else min(limits.max_connections, open_files)

    class GuardedProtocol(HttpToolsProtocol):
        # Connections waiting for a request (new, kept alive, or dribbling their headers), the one
        # waiting longest first: the ones closed to make room.
        waiting: OrderedDict[GuardedProtocol, None] = OrderedDict()
        max_connections = cap

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._phase = "idle"  # idle -> head -> body -> app -> idle ...
            self._head_bytes = 0
            self._timer: asyncio.TimerHandle | None = None
            if len(self.connections) > self.max_connections:
                if not self.waiting:
                    self._refuse(503, f"busy: this server process holds its maximum of {self.max_connections} "
                                 "connections, all with requests in progress; try again in a moment")
                    return
                oldest = next(iter(self.waiting))
                self.waiting.pop(oldest)
                oldest.transport.close()
            self.waiting[self] = None
            self._arm(limits.idle_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self.waiting.pop(self, None)
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._phase == "head" and not self.transport.is_closing():
                # Still in the headers after this chunk: count it (a chunk is at most 256 KiB, so
                # no more than that is ever buffered beyond the limit).
                self._head_bytes += len(data)
                if self._head_bytes > limits.max_head:
                    self._refuse(431, f"the request's line and headers are larger than {limits.max_head} "
                                 "bytes; send fewer or shorter headers")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._phase = "head"
            self._head_bytes = 0
            self._arm(limits.head_timeout)

        def on_headers_complete(self) -> None:
            if len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) > limits.max_head:
                self._phase = "refused"  # the rest of the request is ignored; the app never sees it
                self._refuse(431, f"the request's line and headers are larger than {limits.max_head} bytes; "
                             "send fewer or shorter headers")
                return
            super().on_headers_complete()
            self._phase = "body"
            self.waiting.pop(self, None)
            self._arm(limits.body_timeout)

        def on_body(self, body: bytes) -> None:
            if self._phase != "refused":
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._phase == "refused":
                return
            super().on_message_complete()
            self._phase = "app"
            self._disarm()

        def on_response_complete(self) -> None:
            pipelined = bool(self.pipeline)
            super().on_response_complete()
            if self.transport.is_closing() or pipelined:
                return
            if self._phase == "body":  # answered before its body came in full: the rest is not read
                self.transport.close()
                return
            self._phase = "idle"
            self.waiting[self] = None  # to the end: the most recent
            self._arm(limits.idle_timeout)

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._expired, self._phase)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expired(self, phase: str) -> None:
            self._timer = None
            if self.transport.is_closing() or phase != self._phase:
                return
            if phase == "head":
                self._refuse(408, f"the request's headers did not arrive within {limits.head_timeout:g} s")
            elif phase == "body" and self.cycle is not None and not self.cycle.response_started:
                # The app is told the client went away; what it answers now is dropped.
                self.cycle.disconnected = True
                self.cycle.message_event.set()
                self._refuse(408, f"the request body did not arrive within {limits.body_timeout:g} s; "
                             "send it at once")
            else:
                self.transport.close()

        def _refuse(self, status: int, message: str) -> None:
            """Answer `status` with {"error": message} and close, whatever the request's state."""
            body = json.dumps({"error": message}).encode()
            reason = {408: "Request Timeout", 431: "Request Header Fields Too Large",
                      503: "Service Unavailable"}[status]
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"x-content-type-options: nosniff\r\nconnection: close\r\n\r\n%s"
                                 % (status, reason.encode(), len(body), body))
            self.transport.close()
            self.waiting.pop(self, None)
            self._disarm()

    return GuardedProtocol


# ---------------------------------------------------------------------------
# Who may talk to the server

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class AllowedHosts:
    """The `Host` header values a server answers, against DNS rebinding: a web page from elsewhere
    whose name the attacker points at this machine sends its own name as Host, never one of these.

    Loopback names and addresses always; `names` (the address served, names given by the operator);
    with `any_local_address` (serving on 0.0.0.0 or ::) every address of this machine and its names.
    """

    def __init__(self, names: Iterable[str] = (), any_local_address: bool = False):
        self.names = {_normal(n) for n in (*LOOPBACK_NAMES, *names)}
        self.any_local_address = any_local_address
        if any_local_address:
            hostname = socket.gethostname()
            self.names |= {_normal(n) for n in (hostname, socket.getfqdn(), f"{hostname}.local")}
        self._seen: dict[bytes, bool] = {}  # Host header values already judged (bounded)

    def allows(self, header: bytes | None) -> bool:
        if header is None:
            return False
        known = self._seen.get(header)
        if known is None:
            known = self._judge(header)
            if len(self._seen) < 1024:
                self._seen[header] = known
        return known

    def _judge(self, header: bytes) -> bool:
        try:
            text = header.decode("ascii")
        except UnicodeDecodeError:
            return False
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::\d*)?|([^:\[\]]+)(?::\d*)?", text)
        if not match:
            return False
        name = _normal(match.group(1) or match.group(2))
        if name in self.names or name.endswith(".localhost"):  # *.localhost is loopback (RFC 6761)
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return address.is_loopback or (self.any_local_address and _is_local(address))


def _normal(name: str) -> str:
    return name.strip("[]").rstrip(".").lower()


def _is_local(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether `address` belongs to this machine: only then can a socket be bound to it."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))
        return True
    except OSError:
        return False


def reachable_address() -> str | None:
    """This machine's address on its network (the one its default route leaves from), or None.

    A UDP socket 'connected' to an outside address sends nothing; it only picks the local address."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if ipaddress.ip_address(address).is_loopback else address
