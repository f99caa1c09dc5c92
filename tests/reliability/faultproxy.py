"""A TCP proxy in front of PostgreSQL that injects network faults on demand.

The proxy listens on ``127.0.0.1:<port>`` and forwards every accepted connection to one
upstream ``(host, port)``, one thread per connection, polling with timeouts. Faults are
switched at runtime from any thread and take effect before the method returns (a chunk that
a forwarding thread has already read is still delivered). Linux only (``os.eventfd``).

``lose_next_reply`` reads SQL text in the client's bytes: psycopg2 sends statements as simple
'Q' messages, so the text is visible as long as the session is not encrypted. Clients should
connect with ``sslmode=disable`` (``url_for`` adds it); the proxy also answers a TLS or GSS
encryption request itself with 'N', so ``sslmode=prefer`` falls back to plain text too, while
``sslmode=require`` fails to connect.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import struct
import threading
import time
from collections import Counter
from types import TracebackType
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tests.reliability.faults import FaultKind

log = logging.getLogger(__name__)

_CHUNK = 65536
_POLL_MS = 200  # how often an idle forwarding thread rechecks the proxy's state
_POLL_IN = select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL
# SSLRequest and GSSENCRequest: length 8, then the magic request codes of the protocol.
_ENCRYPTION_REQUESTS = frozenset(struct.pack("!ii", 8, code) for code in (80877103, 80877104))


class _LinkClosed(Exception):
    """A forwarding thread's connection was closed under it (reset, crash or proxy close)."""


class _Link:
    """One client connection and, once traffic flows, its upstream connection.

    Any thread may ``close`` a link. A socket closed while its forwarding thread polls it
    lives on in the kernel until that poll returns, so ``close`` also signals the link's
    eventfd, which every poll of the forwarding thread watches.
    """

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.closed = False
        self.startup = True  # no client bytes forwarded yet
        self._lock = threading.Lock()
        self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def attach(self, upstream: socket.socket) -> bool:
        """Adopt the upstream socket; False (and the socket closed) if the link closed first."""
        with self._lock:
            if not self.closed:
                self.upstream = upstream
                return True
        upstream.close()
        return False

    def poll(self, sock: socket.socket | None, events: int) -> list[int]:
        """Wait up to ``_POLL_MS`` for ``events`` on ``sock`` (or on both sockets if None);
        returns the ready fds. Raises ``_LinkClosed`` once the link is closed."""
        poller = select.poll()
        with self._lock:
            if self.closed:
                raise _LinkClosed
            poller.register(self._wake_fd, select.POLLIN)
            for each in (self.client, self.upstream) if sock is None else (sock,):
                if each is not None:
                    poller.register(each, events)
        ready = [fd for fd, _ in poller.poll(_POLL_MS)]
        if self.closed:
            raise _LinkClosed
        return ready

    def close(self, *, reset: bool) -> bool:
        """Close both sides, with an RST (``SO_LINGER`` 0) if ``reset``; False if already closed."""
        with self._lock:
            if self.closed:
                return False
            self.closed = True
            for sock in (self.client, self.upstream):
                if sock is None:
                    continue
                try:
                    if reset:
                        linger = struct.pack("ii", 1, 0)
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    sock.close()
                except OSError:
                    pass
            if self._wake_fd >= 0:
                os.eventfd_write(self._wake_fd, 1)  # ends the poll that keeps the sockets alive
        return True

    def release(self) -> None:
        """Close the link and its eventfd; called once by the forwarding thread as it ends."""
        self.close(reset=True)
        with self._lock:
            if self._wake_fd >= 0:
                os.close(self._wake_fd)
                self._wake_fd = -1


class FaultProxy:
    """A threaded TCP proxy to ``upstream`` whose faults can be switched at runtime.

    Faults and their undo: ``refuse``/``admit`` (new connections get ECONNREFUSED; the port
    is kept), ``blackhole``/``heal`` (all traffic stalls in both directions, nothing is
    closed), ``latency(s)``/``latency(0)``, ``crash``/``admit`` (listener and every
    connection closed, as if the proxy process died). ``reset_all`` and ``lose_next_reply``
    act once. ``pass_through`` undoes everything. ``counts`` tells how many faults of each
    kind were injected.

    Args:
        upstream: ``(host, port)`` every connection is forwarded to.
        host: address to listen on.
        port: port to listen on; 0 picks a free one, kept for the proxy's lifetime.
        connect_timeout_s: limit on connecting upstream; past it the client is reset.
        reply_timeout_s: how long ``lose_next_reply`` waits for the reply it drops.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout_s: float = 5.0,
        reply_timeout_s: float = 10.0,
    ) -> None:
        if connect_timeout_s <= 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {connect_timeout_s!r}")
        if reply_timeout_s <= 0:
            raise ValueError(f"reply_timeout_s must be > 0, got {reply_timeout_s!r}")
        self._upstream = upstream
        self._host = host
        self._port = port
        self._connect_timeout_s = connect_timeout_s
        self._reply_timeout_s = reply_timeout_s
        self._cond = threading.Condition()  # guards everything below; notified on each change
        self._listener: socket.socket | None = None
        self._closing = False
        self._blackholed = False
        self._latency_s = 0.0
        self._lose_pattern: bytes | None = None
        self._lose_after: bytes | None = None  # only a link that sent this loses its reply
        self._lose_armed: set[_Link] = set()
        self._lost_after: Counter[str] = Counter()  # fired lost acks by what armed them
        self._links: dict[_Link, threading.Thread] = {}
        self._counts: Counter[FaultKind] = Counter()
        self._acceptor: threading.Thread | None = None
        self._n_accepted = 0  # names the forwarding threads; touched by the acceptor only

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Bind the listener and start accepting; returns the proxy."""
        with self._cond:
            if self._acceptor is not None:
                raise RuntimeError("FaultProxy already started")
            self._listen()
            self._acceptor = threading.Thread(
                target=self._accept_loop, name=f"faultproxy-{self._port}", daemon=True
            )
        self._acceptor.start()
        log.info("fault proxy on %s:%d -> %s:%d", self._host, self._port, *self._upstream)
        return self

    def close(self, timeout_s: float = 2.0) -> None:
        """Close the listener and every connection (RST), and join all threads."""
        with self._cond:
            self._closing = True
            self._unlisten()
            links = list(self._links.items())
            self._cond.notify_all()
        for link, _ in links:
            link.close(reset=True)
        deadline = time.monotonic() + timeout_s
        threads = [thread for _, thread in links]
        if self._acceptor is not None:
            threads.append(self._acceptor)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("fault proxy thread %s did not stop in %.1f s", thread.name, timeout_s)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def port(self) -> int:
        """The port clients connect to (fixed once started)."""
        return self._port

    def url_for(self, url: str) -> str:
        """``url`` (``postgresql[+driver]://user@host:port/db?...``) pointed at the proxy,
        with ``sslmode=disable`` unless the URL sets an sslmode."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        query = dict(parse_qsl(parts.query))
        query.setdefault("sslmode", "disable")
        netloc += f"{self._host}:{self._port}"
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))

    @property
    def counts(self) -> dict[FaultKind, int]:
        """Faults injected so far, by kind (a copy)."""
        with self._cond:
            return dict(self._counts)

    @property
    def n_connections(self) -> int:
        """Client connections currently open through the proxy."""
        with self._cond:
            return len(self._links)

    # -- faults ------------------------------------------------------------------------------

    def pass_through(self) -> None:
        """Undo every fault: listen again, let traffic flow, no latency, no armed lost reply."""
        self.admit()
        self.heal()
        self.latency(0.0)
        self.cancel_lost_reply()

    def refuse(self) -> None:
        """Close the listener: new connections get ECONNREFUSED; open ones keep working."""
        with self._cond:
            if self._listener is not None:
                self._unlisten()
                self._counts[FaultKind.REFUSE] += 1

    def admit(self) -> None:
        """Listen again on the same port (after ``refuse`` or ``crash``)."""
        with self._cond:
            if self._listener is None and not self._closing:
                self._listen()
                self._cond.notify_all()

    def blackhole(self) -> None:
        """Stall all traffic, both directions, on open and new connections, closing nothing.

        New connections are accepted (the kernel completes the handshake) but not connected
        upstream until ``heal``. Bytes wait in the kernel's buffers, so nothing is lost.
        """
        with self._cond:
            if not self._blackholed:
                self._blackholed = True
                self._counts[FaultKind.BLACKHOLE] += 1

    def heal(self) -> None:
        """End a blackhole: buffered bytes flow on."""
        with self._cond:
            self._blackholed = False
            self._cond.notify_all()

    def latency(self, seconds: float) -> None:
        """Delay every forwarded chunk by ``seconds`` (0 turns the delay off)."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        with self._cond:
            if seconds > 0 and self._latency_s == 0:
                self._counts[FaultKind.LATENCY] += 1
            self._latency_s = seconds
            self._cond.notify_all()

    def reset_all(self) -> int:
        """Reset (RST) every open connection now, both sides; returns how many."""
        with self._cond:
            links = list(self._links)
        n_reset = sum(link.close(reset=True) for link in links)
        with self._cond:
            self._counts[FaultKind.RESET] += 1
            self._cond.notify_all()
        log.info("fault proxy reset %d connections", n_reset)
        return n_reset

    def crash(self) -> int:
        """Close the listener and every connection, as if the proxy died; ``admit`` restarts.

        Returns how many connections were closed.
        """
        with self._cond:
            self._unlisten()
            self._counts[FaultKind.PROXY_RESTART] += 1
            links = list(self._links)
        n_closed = sum(link.close(reset=False) for link in links)
        with self._cond:
            self._cond.notify_all()
        return n_closed

    def lose_next_reply(self, pattern: bytes = b"COMMIT", *, after: bytes | None = None) -> None:
        """Arm a lost ack for the next client message containing ``pattern`` (any case).

        That message reaches the server; the proxy waits for the server's reply, drops it and
        resets both sides: the server did the work, the client sees a connection error. The
        pattern is matched within one received chunk (a short statement is one chunk).

        ``after``: only on a connection that sent a message containing ``after`` since its last
        ROLLBACK, so the COMMIT whose reply is lost is that of a chosen kind of write (a trial's
        creation, a state change, a re-queued copy) rather than whichever commits next.
        """
        if not pattern or after == b"":
            raise ValueError(f"patterns must not be empty, got {pattern!r}, {after!r}")
        with self._cond:
            self._lose_pattern = pattern.lower()
            self._lose_after = after.lower() if after else None
            self._lose_armed.clear()

    @property
    def lost_acks_after(self) -> dict[str, int]:
        """Fired lost acks by the ``after`` pattern that armed them (``"any"`` without one)."""
        with self._cond:
            return dict(self._lost_after)

    def cancel_lost_reply(self) -> bool:
        """Disarm ``lose_next_reply``; True if it was still armed (never fired)."""
        with self._cond:
            armed = self._lose_pattern is not None
            self._lose_pattern = self._lose_after = None
            self._lose_armed.clear()
            return armed

    # -- internals ---------------------------------------------------------------------------

    def _listen(self) -> None:
        """Bind and listen on ``self._port`` (a free port the first time). Caller holds the lock."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self._host, self._port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        self._port = listener.getsockname()[1]
        self._listener = listener

    def _unlisten(self) -> None:
        """Close the listener (its backlog is reset). Caller holds the lock."""
        if self._listener is not None:
            # shutdown first: the acceptor's poll holds the socket open until it returns,
            # and a listener that lingers would accept instead of refusing.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None

    def _accept_loop(self) -> None:
        while True:
            with self._cond:
                while self._listener is None and not self._closing:
                    self._cond.wait(1.0)  # admit() and close() notify
                listener = self._listener
                if self._closing or listener is None:
                    return
            try:
                poller = select.poll()
                poller.register(listener, select.POLLIN)
                if poller.poll(1000):  # the shutdown in _unlisten wakes it too
                    client, _ = listener.accept()
                    self._spawn(client, listener)
            except (OSError, ValueError):  # closed by refuse, crash or close meanwhile
                continue

    def _spawn(self, client: socket.socket, listener: socket.socket) -> None:
        link = _Link(client)
        self._n_accepted += 1
        thread = threading.Thread(
            target=self._serve,
            args=(link,),
            name=f"faultproxy-{self._port}-link-{self._n_accepted}",
        )
        thread.daemon = True
        with self._cond:
            if self._closing or self._listener is not listener:
                link.release()  # accepted just as the listener went away: as if in its backlog
                return
            self._links[link] = thread
            thread.start()  # under the lock: close() joins every thread it finds listed

    def _serve(self, link: _Link) -> None:
        """Forward one connection until either side closes or a fault ends it."""
        clean = False
        try:
            self._wait_while_blackholed(link)
            upstream = socket.create_connection(self._upstream, timeout=self._connect_timeout_s)
            if link.attach(upstream):
                link.client.setblocking(False)
                upstream.setblocking(False)
                clean = self._pump(link, upstream)
        except (OSError, ValueError, _LinkClosed) as e:
            log.debug("fault proxy link ended: %r", e)
        finally:
            link.close(reset=not clean)
            link.release()
            with self._cond:
                self._links.pop(link, None)
                self._lose_armed.discard(link)

    def _pump(self, link: _Link, upstream: socket.socket) -> bool:
        """Forward bytes both ways; True on an orderly end (one side closed)."""
        client = link.client
        by_fd = {client.fileno(): client, upstream.fileno(): upstream}
        while True:
            self._wait_while_blackholed(link)
            for fd in link.poll(None, _POLL_IN):
                if fd not in by_fd:
                    continue
                if self._blackholed:  # a partition began meanwhile: leave the bytes unread
                    break
                source = by_fd[fd]
                try:
                    data = source.recv(_CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    return True
                self._delay(link)
                if source is upstream:
                    self._send(link, client, data)
                elif link.startup and data in _ENCRYPTION_REQUESTS:
                    self._send(link, client, b"N")  # no TLS: keep the SQL readable
                else:
                    link.startup = False
                    target = self._take_lose_pattern(link, data)
                    if target is not None:
                        self._lose_reply(link, upstream, data, target)
                        return False
                    self._send(link, upstream, data)

    def _wait_while_blackholed(self, link: _Link) -> None:
        with self._cond:
            while self._blackholed and not (link.closed or self._closing):
                self._cond.wait(1.0)
            if link.closed or self._closing:
                raise _LinkClosed

    def _delay(self, link: _Link) -> None:
        with self._cond:
            if self._latency_s > 0:
                self._cond.wait_for(lambda: link.closed or self._closing, self._latency_s)

    def _take_lose_pattern(self, link: _Link, data: bytes) -> str | None:
        """What armed the lost ack if ``data`` is the message whose reply is to be lost."""
        with self._cond:
            if self._lose_pattern is None:
                return None
            low = data.lower()
            after = self._lose_after
            if after is not None:
                if link not in self._lose_armed:
                    if after in low:
                        self._lose_armed.add(link)
                    return None
                if b"rollback" in low:  # that operation ended without a commit
                    self._lose_armed.discard(link)
                    return None
            if self._lose_pattern not in low:
                return None
            self._lose_pattern = self._lose_after = None
            self._lose_armed.clear()
            return "any" if after is None else after.decode(errors="replace")

    def _send(self, link: _Link, sock: socket.socket, data: bytes) -> None:
        """Send all of ``data``, polling so that a peer that stopped reading (a frozen
        process) cannot wedge the thread past the link's close."""
        view = memoryview(data)
        while view:
            if self._closing:
                raise _LinkClosed
            if link.poll(sock, select.POLLOUT):
                try:
                    view = view[sock.send(view) :]
                except BlockingIOError:
                    continue

    def _lose_reply(self, link: _Link, upstream: socket.socket, data: bytes, target: str) -> None:
        """Forward ``data``, swallow the server's reply, then reset both sides."""
        self._send(link, upstream, data)
        deadline = time.monotonic() + self._reply_timeout_s
        replied = False
        while not replied and time.monotonic() < deadline:
            if link.poll(upstream, _POLL_IN):
                try:
                    replied = bool(upstream.recv(_CHUNK))
                except BlockingIOError:
                    continue
                if not replied:
                    break  # the server closed instead of replying
        if replied:  # counted before the reset: the client may look the moment it sees it
            with self._cond:
                self._counts[FaultKind.LOST_ACK] += 1
                self._lost_after[target] += 1
            log.info("fault proxy dropped the reply to %r", data[5:80])
        else:
            log.warning("fault proxy saw no reply to drop for %r", data[5:80])
        link.close(reset=True)
