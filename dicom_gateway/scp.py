"""The gateway: a pynetdicom Storage SCP (and Verification SCP) wired to spool, store and broker.

``Gateway(settings, store, celery_app).start()`` returns once the server listens; ``stop()``
stops accepting, lets open associations finish for a moment, aborts the rest and queues what
is pending. Received data sets are streamed to disk by pynetdicom (chunked receive) into a
folder inside the spool (:mod:`dicom_gateway.incoming`); chunked receive, the temporary folder
and pydicom's validation mode are process-wide settings, so one process runs one gateway.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from pydicom import config as pydicom_config
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from cxr_triage.settings import Settings
from dicom_gateway import handlers, incoming, limits
from dicom_gateway.assembly import StudyAssembly
from dicom_gateway.commit import Committer
from dicom_gateway.handlers import ReceivePolicy
from dicom_gateway.retention import prune_spool
from dicom_gateway.spool import Spool
from governance.db import Store
from governance.errors import ConfigError, StoreRejected, StoreUnavailable
from governance.models import Instance
from governance.pseudonyms import load_key

logger = logging.getLogger(__name__)

STORAGE_SOP_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

UNCOMPRESSED_SYNTAXES = [
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
]
STORAGE_SYNTAXES = UNCOMPRESSED_SYNTAXES + [
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction (Process 14 SV1)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
]

# A temporary file nobody wrote to for this long belongs to a transfer that was cut off.
_STALE_INCOMING_MIN_S = 300.0
# How long stop() lets open associations finish before aborting them.
_STOP_GRACE_S = 5.0


def make_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the gateway, or None when CXR_DICOM_TLS_CERT is not set.

    TLS 1.2 or newer (PS3.15 B.9 "BCP 195 TLS Secure Transport Connection Profile"); with
    CXR_DICOM_TLS_CA, a client certificate signed by that CA is required.

    Raises
    ------
    ConfigError
        A certificate, key or CA file cannot be read or does not match.
    """
    if settings.dicom_tls_cert is None or settings.dicom_tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.dicom_tls_cert, settings.dicom_tls_key)
        if settings.dicom_tls_ca is not None:
            context.load_verify_locations(cafile=str(settings.dicom_tls_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot use the DICOM TLS files (CXR_DICOM_TLS_CERT/KEY/CA): {exc}"
        ) from None
    return context


def make_ae(settings: Settings) -> AE:
    """The application entity with the gateway's contexts, PDU size, timeouts and allow-list."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    ae.network_timeout = settings.network_timeout_s
    # A peer gets this long to request an association (and to answer a release).
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.network_timeout_s
    # GatewayServer admits connections before pynetdicom sees them; this is a second guard.
    ae.maximum_associations = 2 * settings.max_associations
    ae.require_calling_aet = list(settings.allowed_calling_aes)
    ae.add_supported_context(Verification, UNCOMPRESSED_SYNTAXES)
    for sop_class_uid in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class_uid, STORAGE_SYNTAXES)
    return ae


class Gateway:
    """The DICOM gateway of one process.

    Parameters
    ----------
    settings
        ``ae_title``, ``dicom_host``, ``dicom_port``, ``allowed_calling_aes``, ``max_pdu``,
        ``network_timeout_s``, ``stable_age_s`` and ``spool_path`` are used.
    store
        The store, migrated (the ``instances`` table must exist).
    celery_app
        The producer app from :func:`worker.celery_app.make_celery`.
    sweep_interval_s
        How often the store is asked for studies that were received but never queued.
    refusal_window_s
        Refused associations are audited at most once per peer per this many seconds.
    retention_interval_s
        How often spool retention runs (default ``settings.spool_prune_interval_s``).
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        celery_app: Celery,
        *,
        sweep_interval_s: float = 30.0,
        refusal_window_s: float = 60.0,
        retention_interval_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.spool = Spool(
            settings.spool_path,
            min_free_bytes=int(settings.spool_min_free_gb * 2**30),
            max_bytes=int(settings.spool_max_gb * 2**30),
        )
        self.retention_interval_s = (
            settings.spool_prune_interval_s
            if retention_interval_s is None
            else retention_interval_s
        )
        self.pseudonym_key = load_key(settings)
        self.committer = Committer(store, self.spool)
        self.assembly = StudyAssembly(
            store,
            celery_app,
            stable_age_s=settings.stable_age_s,
            sweep_interval_s=sweep_interval_s,
            requeue_after_s=settings.requeue_after_s,
            max_attempts=settings.reconcile_max_attempts,
        )
        self.ae = make_ae(settings)
        self.ssl_context = make_ssl_context(settings)
        self.limiter = limits.ConnectionLimiter(
            settings.max_associations, settings.max_associations_per_peer
        )
        self.refusals = limits.RefusalAuditor(store, window_s=refusal_window_s)
        self.policy = ReceivePolicy(
            accepted_sop_classes=frozenset(STORAGE_SOP_CLASSES),
            max_instance_bytes=settings.max_instance_bytes,
        )
        self._server: limits.GatewayServer | None = None
        self._previous_tempdir: str | None = None
        self._restore_incoming: Callable[[], None] = lambda: None
        self._previous_validation = pydicom_config.settings.reading_validation_mode
        self._janitor_stop = threading.Event()
        self._janitor: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The host and port the server listens on."""
        if self._server is None:
            raise RuntimeError("the gateway is not running")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Prepare the spool, check the store, queue leftovers and listen; returns at once.

        Raises
        ------
        ConfigError
            The spool is not writable, the store does not answer or is not initialised, or the
            port is taken.
        """
        if self._server is not None:
            raise RuntimeError("the gateway is already running")
        self.spool.prepare()
        check_store(self.store)
        self.remove_orphans()
        _config.STORE_RECV_CHUNKED_DATASET = True
        # pynetdicom writes each received data set with NamedTemporaryFile() in tempfile's
        # folder; inside the spool the final placement is a rename on one filesystem.
        self._previous_tempdir = tempfile.tempdir
        tempfile.tempdir = str(self.spool.incoming)
        self._restore_incoming = incoming.install(
            self.spool.incoming, self.settings.max_instance_bytes
        )
        # pydicom would log each invalid value it reads, value included; peers send many.
        self._previous_validation = pydicom_config.settings.reading_validation_mode
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        self.committer.start()
        self.assembly.start()
        self.refusals.start()
        try:
            self._server = limits.start_server(
                self.ae,
                (self.settings.dicom_host, self.settings.dicom_port),
                evt_handlers=self._handlers(),
                limiter=self.limiter,
                refused=self._refused,
                ssl_context=self.ssl_context,
            )
        except OSError as exc:
            self.refusals.stop()
            self.assembly.stop()
            self.committer.stop()
            self._restore_process_settings()
            raise ConfigError(
                f"cannot listen on {self.settings.dicom_host}:{self.settings.dicom_port}: "
                f"{exc.strerror or exc}; set CXR_DICOM_HOST/CXR_DICOM_PORT"
            ) from None
        self._janitor_stop.clear()
        self._janitor = threading.Thread(
            target=self._sweep_incoming, name="cxr-spool-janitor", daemon=True
        )
        self._janitor.start()
        if not self.settings.allowed_calling_aes:
            logger.warning(
                "CXR_ALLOWED_CALLING_AES is empty: associations from any calling AE title "
                "are accepted"
            )
        host, port = self.address
        logger.info(
            "DICOM gateway %s listening on %s:%d (%s, max PDU %d bytes, %d connections, %d per "
            "peer, instances up to %.0f MB), spool %s",
            self.settings.ae_title,
            host,
            port,
            "TLS" if self.ssl_context else "no TLS",
            self.settings.max_pdu,
            self.settings.max_associations,
            self.settings.max_associations_per_peer,
            self.settings.max_instance_mb,
            self.spool.root,
        )

    def _refused(self, address: str, actor: str | None, reason: str) -> None:
        self.refusals.note(address, actor=actor, reason=reason)

    def remove_orphans(self) -> int:
        """Remove spool files the store has no row for; before listening, so none is in flight.

        Such a file was placed by a gateway that died before its row committed: the peer was
        never answered Success for it, keeps the instance and sends it again. Cleaned, not
        adopted: adopting would record an instance nobody was told we hold.
        """
        files = self.spool.study_files()
        if not files:
            return 0
        with self.store.read() as session:
            known = set(session.scalars(select(Instance.path).where(Instance.pruned_at.is_(None))))
        orphans = [path for path in files if str(path) not in known]
        for path in orphans:
            self.spool.discard(path)
        if orphans:
            self.spool.remove_empty_folders({path.parent for path in orphans})
            logger.warning(
                "removed %d spool files the store has no record of (a crash between placing "
                "and recording them; their senders were not answered Success)",
                len(orphans),
            )
        return len(orphans)

    def _handlers(self) -> list[Any]:
        allowed = list(self.settings.allowed_calling_aes)
        return [
            (evt.EVT_C_ECHO, handlers.handle_echo),
            (
                evt.EVT_C_STORE,
                handlers.handle_store,
                [
                    self.spool,
                    self.committer,
                    self.assembly,
                    self.pseudonym_key,
                    self.policy,
                    self.settings.worklist_phi,
                ],
            ),
            (evt.EVT_ACCEPTED, handlers.handle_accepted),
            (evt.EVT_RELEASED, handlers.handle_released, [self.assembly]),
            (evt.EVT_ABORTED, handlers.handle_aborted, [self.assembly]),
            (evt.EVT_REJECTED, handlers.handle_rejected, [self.refusals, allowed]),
            (evt.EVT_CONN_CLOSE, limits.handle_conn_close, [self.limiter]),
        ]

    def _sweep_incoming(self) -> None:
        """The janitor: abandoned incoming files, and spool retention."""
        stale_s = max(_STALE_INCOMING_MIN_S, 2 * self.settings.network_timeout_s)
        tick = min(stale_s / 2, 60.0, self.retention_interval_s)
        next_incoming = time.monotonic() + min(stale_s / 2, 60.0)
        next_retention = time.monotonic() + min(self.retention_interval_s, 5.0)
        while not self._janitor_stop.wait(tick):
            now = time.monotonic()
            if now >= next_incoming:
                next_incoming = now + min(stale_s / 2, 60.0)
                removed = self.spool.sweep_incoming(older_than_s=stale_s)
                incoming.forget_missing_oversize()
                if removed:
                    logger.info("removed %d abandoned incoming files", removed)
            if now >= next_retention:
                next_retention = now + self.retention_interval_s
                self.run_retention()

    def run_retention(self) -> None:
        """One spool retention run (logged, never raised: the janitor must go on)."""
        try:
            prune_spool(self.store, self.spool, self.settings.spool_retention_h)
        except (StoreUnavailable, StoreRejected) as exc:
            logger.warning("spool retention skipped: %s", exc)
        except Exception:
            logger.exception("spool retention failed")
        if self.spool.max_bytes:
            self.spool.measure()

    def stop(self) -> None:
        """Stop accepting, let open associations finish briefly, abort the rest, queue leftovers."""
        if self._server is None:
            return
        self._server.shutdown()
        deadline = time.monotonic() + _STOP_GRACE_S
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self.ae.active_associations:
            logger.warning("aborting the association with %s at shutdown", assoc.requestor.address)
            assoc.abort()
        # After the associations: a handler still waiting for its batch gets its answer.
        self.committer.stop()
        self._server = None
        self._janitor_stop.set()
        if self._janitor is not None:
            self._janitor.join(timeout=5)
            self._janitor = None
        self.assembly.stop()
        self.refusals.stop()
        self._restore_process_settings()
        logger.info("DICOM gateway %s stopped", self.settings.ae_title)

    def _restore_process_settings(self) -> None:
        self._restore_incoming()
        tempfile.tempdir = self._previous_tempdir
        pydicom_config.settings.reading_validation_mode = self._previous_validation


def check_store(store: Store) -> None:
    """Raise ConfigError unless the store answers at the schema revision this code needs."""
    try:
        store.check_schema()
    except StoreUnavailable as exc:
        raise ConfigError(f"the store does not answer: {exc}; check CXR_DATABASE_URL") from None
