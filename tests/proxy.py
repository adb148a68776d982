"""A threaded loopback TCP proxy for fault injection.

``TCPProxy(target_host, target_port)`` listens on a free 127.0.0.1 port and forwards
every connection it accepts to the target.  Faults:

* :meth:`TCPProxy.cut` closes every current connection (both sides see an EOF);
  connections made afterwards are forwarded again.

Without a fault the proxy loses no byte it accepted: when one side ends its stream (or
resets), the proxy half-closes the other side (a FIN after everything forwarded) and
keeps forwarding the other way until that side ends too, as a direct connection would.
* :meth:`TCPProxy.blackhole` (True) stops forwarding bytes in both directions without
  closing anything, for current and new connections alike: the peers see a half-open
  connection.  ``blackhole(False)`` resumes forwarding (bytes held in the kernel
  buffers meanwhile are delivered then).
* :meth:`TCPProxy.stall_client` (True) stops reading from the clients of the current
  connections while still forwarding what the server sends them: a peer that stopped
  reading.  Once the kernel buffers fill, the client's writes block.  Connections made
  afterwards are not stalled (a client that reconnects gets through).  Pass
  ``client_rcvbuf`` (bytes) to make the buffers fill after little data.
* :meth:`TCPProxy.refuse` (True) accepts new connections and closes them at once (the
  server looks down to a reconnecting client); current connections are not touched.

Everything is bounded: every socket call and wait has a timeout, and :meth:`stop`
joins every thread.  Thread names start with ``proxy-`` (never ``natsync``, so the
leftover-thread check of ``conftest.py`` does not count them).
"""

from __future__ import annotations

import itertools
import selectors
import socket
import threading
from types import TracebackType

__all__ = ["TCPProxy"]

_POLL = 0.05  # seconds: how often a blocked thread looks at the stop / blackhole flags
_SEND_TIMEOUT = 5.0  # a peer that takes no bytes for this long gets its connection closed
_CHUNK = 65536
_JOIN_TIMEOUT = 5.0


class _Pipe:
    """One proxied connection: the accepted client socket and the upstream socket,
    pumped both ways by one thread."""

    def __init__(self, proxy: TCPProxy, client: socket.socket, upstream: socket.socket, index: int) -> None:
        self._proxy = proxy
        self.client = client
        self.upstream = upstream
        self._closing = threading.Event()
        self.stalled = threading.Event()  # stop reading from the client
        self.thread = threading.Thread(target=self._run, name=f"proxy-pipe-{index}", daemon=True)

    def close(self) -> None:
        """Ask the pump to close both sides; wakes it at once."""
        self._closing.set()
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        peer = {self.client: self.upstream, self.upstream: self.client}
        reading = {self.client, self.upstream}  # sides whose end of stream has not come
        dead: set[socket.socket] = set()  # sides that were reset: nothing can go to them
        try:
            for s in peer:
                s.settimeout(_SEND_TIMEOUT)
                sel.register(s, selectors.EVENT_READ)
            reading_client = True
            while reading and not self._closing.is_set():
                if self.upstream not in reading and not reading_client:
                    return
                if self._proxy._blackholed.is_set():
                    # hold everything: read nothing, write nothing, close nothing
                    self._closing.wait(_POLL)
                    continue
                if self.client in reading and self.stalled.is_set() == reading_client:
                    # stall_client(): stop (or resume) reading what the client sends
                    reading_client = not reading_client
                    if reading_client:
                        sel.register(self.client, selectors.EVENT_READ)
                    else:
                        sel.unregister(self.client)
                for key, _ in sel.select(_POLL):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst = peer[src]
                    try:
                        data = src.recv(_CHUNK)
                    except OSError:  # reset: what it sent before was forwarded already
                        data = b""
                        dead.add(src)
                    if data:
                        if dst not in dead:
                            try:
                                dst.sendall(data)
                            except OSError:
                                dead.add(dst)  # gone: what is still meant for it is read and dropped
                        continue
                    # src's end of stream (or reset): pass the half-close on as a FIN after
                    # everything forwarded, and go on pumping the other way until its end
                    # of stream, so that the peer reads all the proxy accepted (closing a
                    # socket with unread bytes would reset it and lose its send queue)
                    sel.unregister(src)
                    reading.discard(src)
                    if src is self.client:
                        reading_client = False
                    elif not reading_client:
                        break  # the server ended while the client is stalled: nothing can flow
                    if dst not in dead:
                        try:
                            dst.shutdown(socket.SHUT_WR)
                        except OSError:
                            dead.add(dst)
        except OSError:
            return
        finally:
            sel.close()
            for s in (self.client, self.upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._proxy._forget(self)


class TCPProxy:
    """Forward connections from ``127.0.0.1:<port>`` to ``target_host:target_port``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        connect_timeout: float = 2.0,
        client_rcvbuf: int | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self._connect_timeout = connect_timeout
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if client_rcvbuf is not None:
            # set before listen(): accepted sockets inherit it (and its window scale)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_rcvbuf)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(_POLL)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pipes: list[_Pipe] = []
        self._threads: list[threading.Thread] = []  # pump threads, pruned as they end
        self._stopping = threading.Event()
        self._blackholed = threading.Event()
        self._refusing = threading.Event()
        self._counter = itertools.count(1)
        self.accepted = 0  # connections accepted in all
        self._acceptor = threading.Thread(target=self._accept_main, name="proxy-accept", daemon=True)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """The number of connections being forwarded (or held) right now."""
        with self._lock:
            return len(self._pipes)

    def start(self) -> TCPProxy:
        self._acceptor.start()
        return self

    def cut(self) -> int:
        """Close every current connection; return how many there were."""
        with self._lock:
            pipes = list(self._pipes)
        for p in pipes:
            p.close()
        return len(pipes)

    def blackhole(self, on: bool = True) -> None:
        """Stop (True) or resume (False) forwarding bytes, without closing anything."""
        if on:
            self._blackholed.set()
        else:
            self._blackholed.clear()

    def stall_client(self, on: bool = True) -> int:
        """Stop (True) or resume (False) reading from the clients of the current
        connections; what the server sends is still forwarded. Returns how many
        connections were changed."""
        with self._lock:
            pipes = list(self._pipes)
        for p in pipes:
            if on:
                p.stalled.set()
            else:
                p.stalled.clear()
        return len(pipes)

    def refuse(self, on: bool = True) -> None:
        """Close (True) new connections as soon as they are accepted, or forward them
        again (False). Current connections are not touched."""
        if on:
            self._refusing.set()
        else:
            self._refusing.clear()

    def stop(self) -> None:
        """Stop accepting, close every connection and join every thread (bounded)."""
        self._stopping.set()
        self._blackholed.clear()
        if self._acceptor.is_alive():
            self._acceptor.join(_JOIN_TIMEOUT)
        self._listener.close()
        with self._lock:
            pipes = list(self._pipes)
            threads = list(self._threads)
        for p in pipes:
            p.close()
        for t in threads:
            t.join(_JOIN_TIMEOUT)
        left = [t.name for t in [self._acceptor, *threads] if t.is_alive()]
        if left:
            raise RuntimeError(f"proxy threads did not stop: {left}")

    def _forget(self, pipe: _Pipe) -> None:
        with self._lock:
            if pipe in self._pipes:
                self._pipes.remove(pipe)

    def _accept_main(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self._refusing.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=self._connect_timeout)
            except OSError:
                client.close()  # target down: the client sees the connection closed at once
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe = _Pipe(self, client, upstream, next(self._counter))
            with self._lock:
                if self._stopping.is_set():
                    client.close()
                    upstream.close()
                    return
                self._pipes.append(pipe)
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(pipe.thread)
            pipe.thread.start()

    def __enter__(self) -> TCPProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "forwarding"
        if self._blackholed.is_set():
            state = "blackholed"
        elif self._refusing.is_set():
            state = "refusing"
        return f"<TCPProxy 127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]} {state}>"
