"""A loopback TCP proxy a test can cut: the network between the platform and its database.

``CuttableProxy(("127.0.0.1", 5432))`` listens on an ephemeral port of 127.0.0.1 and relays
every connection to the target. :meth:`CuttableProxy.cut` resets every open connection at
once (both sides see a TCP reset, in the middle of whatever transaction was under way) and
refuses new ones (the listening socket is closed: ``connection refused``, as with a server
that is down) until :meth:`CuttableProxy.restore` listens on the same port again.

Threads, bounded: at most ``max_connections`` relayed at a time (more are refused), one
thread per direction per connection, 64 KiB buffers. Nothing but 127.0.0.1 is ever bound
or dialled.
"""

import select
import socket
import struct
import threading
import time
from contextlib import suppress

LOOPBACK = "127.0.0.1"
_BUFFER = 65536


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), not an orderly FIN: the peer learns at once."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with suppress(OSError):
        sock.close()


class CuttableProxy:
    def __init__(self, target: tuple[str, int], max_connections: int = 64):
        if target[0] != LOOPBACK:
            raise ValueError(f"the proxy only relays to {LOOPBACK}, not {target[0]}")
        self.target = target
        self.max_connections = max_connections
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self.port = 0
        self.accepted = 0  # connections relayed so far
        self.cuts = 0  # connections reset by cut()
        self.refused = 0  # connections refused over the limit
        self._listen()

    # --- control ---------------------------------------------------------------------------------

    @property
    def url_host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def cut(self) -> int:
        """Reset every open connection and refuse new ones; returns how many were reset."""
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, set()
        if listener is not None:
            with suppress(OSError):
                listener.close()
        for client, server in pairs:
            _reset(client)
            _reset(server)
        self.cuts += len(pairs)
        return len(pairs)

    def restore(self) -> None:
        """Accept connections again, on the same port."""
        with self._lock:
            if self._listener is not None:
                return
        self._listen()

    def close(self) -> None:
        self._stopping.set()
        self.cut()

    def __enter__(self) -> "CuttableProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- relaying --------------------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:
            try:
                listener.bind((LOOPBACK, self.port))
                break
            except OSError:  # the old socket's port not free yet
                if time.monotonic() > deadline:
                    listener.close()
                    raise
                time.sleep(0.05)
        listener.listen(32)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name=f"proxy:{self.port}").start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:  # closed by cut() or close()
                return
            with self._lock:
                current = self._listener is listener
                full = len(self._pairs) >= self.max_connections
            if not current or full:
                self.refused += full
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            pair = (client, server)
            with self._lock:
                if self._listener is not listener:  # cut while we dialled
                    _reset(client)
                    _reset(server)
                    continue
                self._pairs.add(pair)
            self.accepted += 1
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(pair, source, sink), daemon=True).start()

    def _pump(self, pair, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                readable, _, _ = select.select([source], [], [], 1.0)
                if self._stopping.is_set():
                    break
                if not readable:
                    continue
                data = source.recv(_BUFFER)
                if not data:
                    break
                sink.sendall(data)
        except (OSError, ValueError):  # ValueError: closed by cut() under our feet (fileno -1)
            pass
        with self._lock:
            mine = pair in self._pairs
            self._pairs.discard(pair)
        if mine:  # an orderly end from one side: end the other, too
            for sock in pair:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with suppress(OSError):
                    sock.close()
