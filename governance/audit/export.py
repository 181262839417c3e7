"""Best-effort export of committed audit events to a syslog receiver (IHE ATNA).

``CXR_SYSLOG_URL`` names the receiver: ``udp://HOST[:514]`` (RFC 5426, one message per
datagram), ``tcp://HOST[:514]`` (RFC 6587 octet counting: ``LEN SP MSG``) or
``tls://HOST[:6514]`` (RFC 5425, the same framing over TLS 1.2+). A TLS URL may name the CA
that signs the receiver's certificate and a client certificate for mutual authentication:
``tls://arr.example.org:6514?ca=/etc/cxr/ca.pem&cert=/etc/cxr/client.pem&key=/etc/cxr/client.key``.

The audited action never waits for the receiver: :func:`governance.audit.record` hands each
event to :meth:`SyslogExporter.submit` after its transaction commits, which only puts it on a
bounded queue. One background thread formats and sends; while the receiver is down it retries
the oldest message with a capped backoff and the queue buffers; when the queue is full, new
events are dropped and counted (with a warning). The database stays the record of truth:
dropped messages are still in the audit trail. A forked child process (Celery's prefork pool)
gets a fresh queue and thread of its own.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from governance.audit import chain
from governance.audit.atna import Origin, format_message
from governance.checks import at_least
from governance.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}
MAX_UDP_PAYLOAD = 65_507


@dataclass(frozen=True)
class TlsFiles:
    """The files of a TLS connection: the CA that signs the receiver's certificate (None: the
    system's trust store), our client certificate and its key (None: no client certificate)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class SyslogTarget:
    """Where audit messages go: transport, host, port and, for TLS, the files it uses."""

    transport: str
    host: str
    port: int
    tls: TlsFiles = TlsFiles()

    def __str__(self) -> str:
        return f"{self.transport}://{self.host}:{self.port}"


def parse_syslog_url(url: str) -> SyslogTarget:
    """Read ``CXR_SYSLOG_URL``.

    Raises
    ------
    ConfigError
        The scheme is not udp, tcp or tls, the host or port is missing or wrong, a TLS option
        is unknown, or a named TLS file does not exist.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"CXR_SYSLOG_URL {url!r} is not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ConfigError(
            f"CXR_SYSLOG_URL {url!r}: use udp://HOST:514, tcp://HOST:514 or tls://HOST:6514"
        )
    if not parts.hostname:
        raise ConfigError(f"CXR_SYSLOG_URL {url!r} names no host")
    options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    unknown = sorted(set(options) - {"ca", "cert", "key"})
    if unknown or (options and scheme != "tls"):
        raise ConfigError(
            f"CXR_SYSLOG_URL {url!r}: only tls:// takes options, and only ca, cert and key"
        )
    files: dict[str, Path | None] = {}
    for name in ("ca", "cert", "key"):
        value = options.get(name)
        files[name] = Path(value).expanduser() if value else None
        if files[name] is not None and not files[name].is_file():  # type: ignore[union-attr]
            raise ConfigError(f"CXR_SYSLOG_URL: the {name} file {value} does not exist")
    if files["key"] is not None and files["cert"] is None:
        raise ConfigError("CXR_SYSLOG_URL: key= needs cert= (the client certificate)")
    return SyslogTarget(
        transport=scheme,
        host=parts.hostname,
        port=port or DEFAULT_PORTS[scheme],
        tls=TlsFiles(**files),
    )


class _Connection:
    """One transport to the receiver, opened on first use and again after a failure."""

    def __init__(self, target: SyslogTarget, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.context: ssl.SSLContext | None = None
        if target.transport == "tls":
            files = target.tls
            context = ssl.create_default_context(cafile=str(files.ca) if files.ca else None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if files.cert is not None:
                context.load_cert_chain(str(files.cert), str(files.key) if files.key else None)
            self.context = context

    def send(self, message: bytes) -> None:
        if self.target.transport == "udp":
            if len(message) > MAX_UDP_PAYLOAD:
                raise ValueError(f"message of {len(message)} bytes is too long for UDP")
            if self.sock is None:
                family = socket.getaddrinfo(self.target.host, self.target.port)[0][0]
                self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock.sendto(message, (self.target.host, self.target.port))
            return
        if self.sock is None:
            sock = socket.create_connection(
                (self.target.host, self.target.port), timeout=self.timeout
            )
            if self.context is not None:
                try:
                    sock = self.context.wrap_socket(sock, server_hostname=self.target.host)
                except BaseException:
                    sock.close()
                    raise
            self.sock = sock
        # RFC 6587 3.4.1 / RFC 5425 4.3: octet counting.
        self.sock.sendall(str(len(message)).encode("ascii") + b" " + message)

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


@dataclass(frozen=True)
class ExportStats:
    """Counters of an exporter: messages sent, dropped (queue full or closed), failed sends."""

    sent: int
    dropped: int
    failed_sends: int
    queued: int


class SyslogExporter:
    """A bounded queue and one thread that sends audit events to a syslog receiver.

    Parameters
    ----------
    target
        The receiver (:func:`parse_syslog_url`).
    queue_size
        Events buffered while the receiver is slow or down; beyond, new ones are dropped.
    audit_source_id
        AuditSourceID in the messages (default: the host name).
    timeout
        Seconds for a TCP/TLS connect or send.
    max_backoff
        Longest wait, in seconds, between attempts to reach a receiver that is down.
    """

    def __init__(
        self,
        target: SyslogTarget,
        *,
        queue_size: int = 1000,
        audit_source_id: str | None = None,
        timeout: float = 5.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.target = target
        self.audit_source_id = audit_source_id
        self.max_backoff = max_backoff
        self.queue_size = at_least("queue_size", queue_size)
        self.timeout = timeout
        self._start()

    def _start(self) -> None:
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=self.queue_size)
        self._connection = _Connection(self.target, self.timeout)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sent = self._dropped = self._failed = 0
        self._thread = threading.Thread(target=self._run, name="cxr-syslog-export", daemon=True)
        self._thread.start()

    def submit(self, fields: dict[str, Any]) -> bool:
        """Queue one event for sending; never blocks. False when it was dropped."""
        if not self._stop.is_set():
            try:
                self._queue.put_nowait(fields)
                return True
            except queue.Full:
                pass
        with self._lock:
            self._dropped += 1
            dropped = self._dropped
        if dropped == 1 or dropped % 100 == 0:
            logger.warning(
                "syslog export to %s: queue full, %d audit events dropped so far (they stay in "
                "the audit trail)",
                self.target,
                dropped,
            )
        return False

    @property
    def stats(self) -> ExportStats:
        with self._lock:
            return ExportStats(self._sent, self._dropped, self._failed, self._queue.qsize())

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued for up to ``timeout`` seconds, then stop; the rest is dropped."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join(1.0)
        left = 0
        while True:
            try:
                left += self._queue.get_nowait() is not None
            except queue.Empty:
                break
        with self._lock:
            self._dropped += left
        self._connection.close()
        if left:
            logger.warning("syslog export to %s closed with %d events unsent", self.target, left)

    def _run(self) -> None:
        while True:
            fields = self._queue.get()
            if fields is None:
                return
            message = format_message(fields, Origin.here(self.audit_source_id))
            if not self._deliver(message, fields.get("id")):
                return

    def _deliver(self, message: bytes, event_id: object) -> bool:
        """Send one message, retrying with backoff; False when the exporter was stopped."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                self._connection.send(message)
            except ValueError as exc:  # this message cannot be sent at all
                logger.warning("syslog export: event %s not sent: %s", event_id, exc)
                with self._lock:
                    self._dropped += 1
                return True
            except (OSError, ssl.SSLError) as exc:
                self._connection.close()
                with self._lock:
                    self._failed += 1
                    failed = self._failed
                if failed == 1 or failed % 20 == 0:
                    logger.warning(
                        "syslog export to %s failed (%d so far): %s; retrying in %.1f s",
                        self.target,
                        failed,
                        exc,
                        delay,
                    )
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            with self._lock:
                self._sent += 1
            return True
        with self._lock:
            self._dropped += 1
        return False


_current: SyslogExporter | None = None


def configure_export(
    url: str | None, *, audit_source_id: str | None = None, queue_size: int = 1000
) -> SyslogExporter | None:
    """Export this process's committed audit events to ``url`` (empty: stop exporting).

    Call it once at a process's entry point with ``settings.syslog_url``. Replaces (and closes)
    an exporter configured before; the exporter is closed at interpreter exit.

    Raises
    ------
    ConfigError
        ``url`` is not a usable syslog URL (see :func:`parse_syslog_url`).
    """
    global _current
    exporter = None
    if url:
        exporter = SyslogExporter(
            parse_syslog_url(url), audit_source_id=audit_source_id, queue_size=queue_size
        )
    previous, _current = _current, exporter
    chain.set_export_sink(exporter.submit if exporter is not None else None)
    if previous is not None:
        previous.close(timeout=1.0)
    if exporter is not None:
        logger.info("exporting audit events to %s", exporter.target)
    return exporter


def _restart_in_child() -> None:
    # A forked child (a Celery prefork worker) has no sender thread and may hold a copy of a
    # lock taken by it: give the child an exporter of its own, empty, to the same receiver.
    if _current is not None:
        _current._start()


os.register_at_fork(after_in_child=_restart_in_child)


@atexit.register
def _close_at_exit() -> None:
    if _current is not None:
        _current.close(timeout=2.0)
