"""Bounds on what peers can hold: connections in all and per address, PDU sizes, idle peers.

pynetdicom counts an association against ``maximum_associations`` only once its A-ASSOCIATE-RQ
arrives, while a TCP connection that says nothing holds a thread until the ACSE timeout, and
a closed one kept its slot until then too. :class:`GatewayServer` admits a connection before
anything is read from it: at most ``max_total`` open at once and ``max_per_peer`` from one
address. One over a limit is answered with A-ASSOCIATE-RJ (rejected-transient, service
provider presentation related, local limit exceeded; PS3.8 9.3.4) and closed. A slot is free
again as soon as its connection closes (``EVT_CONN_CLOSE``), and an acceptor still waiting for
the request of a connection that closed stops waiting at once.

:class:`BoundedSocket` refuses a PDU whose announced length is over the limit (the negotiated
maximum plus room for headers) before reading it: pynetdicom would otherwise grow a buffer to
whatever 32-bit length a peer writes.

TLS (optional): the handshake runs in the connection's own thread with the ACSE timeout, not
in the accepting loop, so a peer that opens a TLS connection and stalls blocks nobody.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from copy import deepcopy
from datetime import datetime
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)
from pynetdicom.utils import make_target

from governance.audit import Action
from governance.db import Store
from governance.errors import StoreUnavailable
from governance.refusals import RefusalCounter, RefusalReport, record_refusals

logger = logging.getLogger(__name__)

MODE_ACCEPTOR = "acceptor"
#: A-ASSOCIATE-RJ PDU: type 3, length 4, result 2 (rejected-transient), source 3 (service
#: provider, presentation related), reason 2 (local limit exceeded); PS3.8 9.3.4.
REJECT_LOCAL_LIMIT = bytes([0x03, 0x00, 0, 0, 0, 4, 0x00, 0x02, 0x03, 0x02])
#: How long a refused connection is read from (for its request) before the rejection goes.
_REFUSE_READ_S = 0.5
_PDU_HEADER = 6
#: Room over the negotiated maximum PDU for the PDU and PDV headers.
_PDU_MARGIN = 1024
#: A-ASSOCIATE-RQ and the like may be long (many presentation contexts) but not unbounded.
_MIN_PDU_LIMIT = 1 << 20
#: With "unlimited" PDUs (max_pdu 0), the most one PDU may announce.
_UNLIMITED_PDU_LIMIT = 64 << 20


class ConnectionLimiter:
    """Open connections, in all and per peer address (thread-safe)."""

    def __init__(self, max_total: int, max_per_peer: int) -> None:
        if max_total < 1 or max_per_peer < 1:
            raise ValueError(
                f"max_total and max_per_peer must be at least 1, got {max_total}, {max_per_peer}"
            )
        self.max_total = max_total
        self.max_per_peer = max_per_peer
        self._lock = threading.Lock()
        self._open: dict[int, tuple[str, Association]] = {}

    def admit(self, address: str, assoc: Association) -> str | None:
        """Count ``assoc``'s connection from ``address``; None, or why it is refused."""
        with self._lock:
            self._prune()
            if len(self._open) >= self.max_total:
                return f"connection limit ({self.max_total}) reached"
            if sum(1 for a, _ in self._open.values() if a == address) >= self.max_per_peer:
                return f"connection limit per peer ({self.max_per_peer}) reached"
            self._open[id(assoc)] = (address, assoc)
            return None

    def release(self, assoc: Association) -> None:
        with self._lock:
            self._open.pop(id(assoc), None)

    def count(self, address: str | None = None) -> int:
        with self._lock:
            self._prune()
            return sum(1 for a, _ in self._open.values() if address is None or a == address)

    def _prune(self) -> None:
        # A thread not started yet (ident None) is being set up; one that ended is gone.
        for key, (_, assoc) in list(self._open.items()):
            if assoc.ident is not None and not assoc.is_alive():
                del self._open[key]


def pdu_limit(max_pdu: int) -> int:
    """The longest PDU a peer may announce when we negotiated ``max_pdu`` (0: unlimited)."""
    if max_pdu <= 0:
        return _UNLIMITED_PDU_LIMIT
    return max(max_pdu + _PDU_MARGIN, _MIN_PDU_LIMIT)


class BoundedSocket(AssociationSocket):
    """An AssociationSocket that will not read a PDU longer than ``limit`` bytes.

    It reads a PDU into one buffer allocated for it (its length bounded first) with
    ``recv_into``, instead of pynetdicom's 4 KB ``recv`` calls appended to a growing bytearray.
    """

    limit: int = _UNLIMITED_PDU_LIMIT

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > self.limit:
            # pynetdicom reads a PDU as recv(6) then recv(length): refuse the length before
            # allocating it. OSError makes the DUL close the connection (Evt17).
            raise OSError(f"peer announced a PDU of {nr_bytes} bytes (limit {self.limit})")
        sock = self.socket
        if sock is None:
            return super().recv(nr_bytes)
        buffer = bytearray(nr_bytes)
        nr_read = 0
        with memoryview(buffer) as view:
            # Blocks until all is read, the peer closes (what came so far is returned, as
            # pynetdicom does) or the socket's timeout raises.
            while nr_read < nr_bytes:
                count = sock.recv_into(view[nr_read:], nr_bytes - nr_read)
                if not count:
                    break
                nr_read += count
        del buffer[nr_read:]
        return buffer


class RefusalAuditor:
    """Audits refusals in aggregate (see :mod:`governance.refusals`) from a small thread."""

    def __init__(self, store: Store, *, window_s: float = 60.0) -> None:
        self.store = store
        self.counter = RefusalCounter(window_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def note(self, address: str | None, *, actor: str | None, reason: str, **detail: Any) -> None:
        """Count a refusal; a quiet peer's first one is audited (and logged) at once."""
        report = self.counter.note(address, actor=actor, reason=reason, detail=detail)
        if report is not None:
            logger.warning(
                "refusing %s: %s (further refusals of this peer are counted and logged once "
                "per %.0f s)",
                report.peer_address,
                reason,
                self.counter.window_s,
            )
            self._write([report])

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cxr-refusals", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._write(self.counter.drain(), log=True)

    def _run(self) -> None:
        interval = min(5.0, self.counter.window_s / 4)
        while not self._stop.wait(interval):
            self._write(self.counter.due(), log=True)

    def _write(self, reports: list[RefusalReport], *, log: bool = False) -> None:
        if not reports:
            return
        for report in reports if log else []:
            logger.warning(
                "refused %s %d more time(s): %s",
                report.peer_address,
                report.count,
                ", ".join(f"{reason} ({n})" for reason, n in report.reasons.items()),
            )
        try:
            self.store.run(
                lambda session: record_refusals(session, reports, action=Action.ASSOCIATION_REFUSED)
            )
        except StoreUnavailable as exc:
            logger.error("could not audit %d refused association(s): %s", len(reports), exc)
        except Exception:
            logger.exception("could not audit %d refused association(s)", len(reports))


class LimitedRequestHandler(RequestHandler):
    """pynetdicom's request handler with admission, a bounded socket and a late TLS handshake."""

    server: GatewayServer

    def handle(self) -> None:
        server = self.server
        address = str(self.client_address[0])
        if isinstance(self.request, ssl.SSLSocket):
            reason = _handshake(self.request, server.handshake_timeout_s)
            if reason is not None:
                logger.warning("TLS connection from %s refused: %s", address, reason)
                server.refused(address, None, f"TLS handshake failed: {reason}")
                _close(self.request)
                return
        assoc = self._create_association()
        refusal = server.limiter.admit(address, assoc)
        if refusal is not None:
            logger.debug("connection from %s refused: %s", address, refusal)
            server.refused(address, None, refusal)
            _refuse(self.request)
            return
        try:
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
        except Exception:
            server.limiter.release(assoc)
            raise

    def _create_association(self) -> Association:
        """As pynetdicom's, with a :class:`BoundedSocket`."""
        assoc = Association(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        sock = BoundedSocket(assoc, client_socket=self.request)
        sock.limit = self.server.pdu_limit
        assoc.set_socket(sock)
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    assoc.bind(event, handler[0], handler[1])  # type: ignore[index]
        return assoc


class GatewayServer(ThreadedAssociationServer):
    """The association server of the gateway: admission before any byte is read."""

    def __init__(
        self,
        *args: Any,
        limiter: ConnectionLimiter,
        refused: Callable[[str, str | None, str], None],
        pdu_limit: int,
        handshake_timeout_s: float,
        **kwargs: Any,
    ) -> None:
        self.limiter = limiter
        self.refused = refused
        self.pdu_limit = pdu_limit
        self.handshake_timeout_s = handshake_timeout_s
        kwargs["request_handler"] = LimitedRequestHandler
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client_socket, address = self.socket.accept()
        if self.ssl_context:
            # The handshake happens in the connection's thread (LimitedRequestHandler).
            client_socket = self.ssl_context.wrap_socket(
                client_socket, server_side=True, do_handshake_on_connect=False
            )
        return client_socket, address


def start_server(
    ae: Any,
    address: tuple[str, int],
    *,
    evt_handlers: list[Any],
    limiter: ConnectionLimiter,
    refused: Callable[[str, str | None, str], None],
    ssl_context: ssl.SSLContext | None = None,
) -> GatewayServer:
    """Start a non-blocking :class:`GatewayServer` for ``ae`` (as ``AE.start_server`` does)."""
    server = ae.make_server(
        address,
        ssl_context=ssl_context,
        evt_handlers=evt_handlers,
        server_class=GatewayServer,
        limiter=limiter,
        refused=refused,
        pdu_limit=pdu_limit(ae.maximum_pdu_size),
        handshake_timeout_s=ae.acse_timeout or 5.0,
    )
    thread = threading.Thread(
        target=make_target(server.serve_forever), name="CxrAcceptorServer", daemon=True
    )
    thread.start()
    ae._servers.append(server)
    return server  # type: ignore[no-any-return]


def handle_conn_close(event: Event, limiter: ConnectionLimiter) -> None:
    """A connection closed: free its slot now; stop waiting for a request that cannot come."""
    assoc = event.assoc
    limiter.release(assoc)
    if assoc.is_acceptor and not assoc.is_established and assoc.requestor.primitive is None:
        # The acceptor waits on this queue for the A-ASSOCIATE-RQ until the ACSE timeout;
        # None is what it gets when that timeout expires.
        assoc.dul.to_user_queue.put(None)  # type: ignore[arg-type]


def _handshake(sock: ssl.SSLSocket, timeout_s: float) -> str | None:
    previous = sock.gettimeout()
    sock.settimeout(timeout_s)
    try:
        sock.do_handshake()
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None)
        return type(exc).__name__ + (f" ({reason})" if reason else "")
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(previous)
    return None


def _refuse(sock: socket.socket) -> None:
    """Answer A-ASSOCIATE-RJ (local limit exceeded) and close, reading the request first.

    Closing a socket with unread data makes the kernel reset the connection, and the peer
    would see a reset instead of the rejection; so the request is read (briefly) first.
    """
    with contextlib.suppress(OSError):
        _read_request(sock)
    with contextlib.suppress(OSError):
        sock.sendall(REJECT_LOCAL_LIMIT)
    _close(sock)


def _read_request(sock: socket.socket) -> None:
    """Read what the peer sent so far (its A-ASSOCIATE-RQ), for at most half a second."""
    sock.settimeout(_REFUSE_READ_S)
    deadline = time.monotonic() + _REFUSE_READ_S
    header = b""
    while len(header) < _PDU_HEADER and time.monotonic() < deadline:
        chunk = sock.recv(_PDU_HEADER - len(header))
        if not chunk:
            return
        header += chunk
    remaining = min(int.from_bytes(header[2:6], "big"), _MIN_PDU_LIMIT)
    while remaining > 0 and time.monotonic() < deadline:
        chunk = sock.recv(min(remaining, 65536))
        if not chunk:
            return
        remaining -= len(chunk)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
