"""The one settings class of cxr-triage.

Settings come from environment variables prefixed ``CXR_`` (and an optional ``.env`` file in
the working directory). They are read once at an entry point with :func:`get_settings` and then
passed down as arguments; library code never reads the environment itself.

The embedded defaults run on one machine with nothing installed: a SQLite file and kombu's
filesystem broker under ``CXR_DATA_DIR``.

This module imports nothing of ours, so every package may import it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_AE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _-.+")


def _check_ae_title(value: str, name: str) -> str:
    title = value.strip()
    if not title or len(title) > 16 or not set(title) <= _AE_CHARS or "\\" in title:
        raise ValueError(f"{name}: {value!r} is not a valid AE title (1-16 printable characters)")
    return title


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything a cxr-triage process can be configured with (``CXR_*`` variables)."""

    # Each setting's docstring is its description (``Settings.model_fields[name].description``).
    model_config = SettingsConfigDict(
        env_prefix="CXR_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        use_attribute_docstrings=True,
    )

    data_dir: Path = Path("var")
    """Folder for the embedded defaults: SQLite store, spool, broker, models."""

    database_url: str = ""
    """SQLAlchemy URL of the store as the services' application role (never the superuser, never the
    schema owner on PostgreSQL); empty: sqlite file in CXR_DATA_DIR."""

    migration_database_url: str = ""
    """URL of the same store as the schema owner, used only by `db upgrade` and `db create-roles`;
    empty: CXR_DATABASE_URL. When its user differs from CXR_DATABASE_URL's, that user is granted
    only what the services need."""

    broker_url: str = ""
    """Celery broker URL (redis://...); empty: kombu filesystem broker in CXR_DATA_DIR."""

    queue: str = "cxr-triage"
    """Celery queue the studies go to."""

    spool_dir: Path | None = None
    """Where received instances are kept; default CXR_DATA_DIR/spool."""

    model_dir: Path | None = None
    """Where model files are kept; default CXR_DATA_DIR/models."""

    # DICOM gateway
    ae_title: str = "CXRTRIAGE"
    """Our AE title."""

    dicom_host: str = "127.0.0.1"
    """Address the DICOM gateway binds; 0.0.0.0 to accept PACS on the network (then set
    CXR_ALLOWED_CALLING_AES)."""

    dicom_port: int = Field(default=11112, ge=1, le=65535)
    """DICOM port."""

    allowed_calling_aes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated calling AE titles accepted; empty accepts all (logged)."""

    max_pdu: int = Field(default=1_048_576, ge=0)
    """Largest PDU we accept, bytes (0: unlimited). 16 KB PDUs cost ~1.8x throughput."""

    stable_age_s: float = Field(default=3.0, gt=0)
    """A study on an open or aborted association is queued after this many seconds without a new
    instance."""

    network_timeout_s: float = Field(default=60.0, gt=0)
    """DICOM network timeout."""

    acse_timeout_s: float = Field(default=5.0, gt=0)
    """How long a peer that connected may take to request an association; one that says nothing is
    disconnected after this (and frees its slot)."""

    max_associations: int = Field(default=32, ge=1)
    """Connections (associations and peers about to request one) the gateway serves at once; more
    are refused with A-ASSOCIATE-RJ transient, local limit exceeded."""

    max_associations_per_peer: int = Field(default=8, ge=1)
    """Connections one peer address may hold at once, so one host cannot take every slot."""

    max_instance_mb: float = Field(default=200.0, gt=0)
    """Largest instance the gateway keeps, MB; a larger one is refused as it streams in (0xA700) and
    never fills the disk."""

    dicom_tls_cert: Path | None = None
    """PEM certificate (chain) of the gateway: with CXR_DICOM_TLS_KEY, the gateway accepts only TLS
    associations (DICOM PS3.15 B.1)."""

    dicom_tls_key: Path | None = None
    """PEM private key of CXR_DICOM_TLS_CERT."""

    dicom_tls_ca: Path | None = None
    """PEM CA bundle: when set, peers must present a client certificate it signed."""

    requeue_after_s: float = Field(default=900.0, gt=0)
    """A study queued this long ago and still not triaged is queued again (its message may have died
    with a worker; triage is idempotent, so a duplicate costs little)."""

    reconcile_max_attempts: int = Field(default=5, ge=1)
    """Automatic requeues of a study not triaged (each waiting twice as long as the last, from
    CXR_REQUEUE_AFTER_S) before the reconciler parks it as failed."""

    sweep_interval_s: float = Field(default=30.0, gt=0)
    """How often the gateway asks the store for studies to queue: never queued (broker down, crash),
    stale (message lost), or found by the reconciler."""

    spool_retention_h: float = Field(default=72.0, ge=0)
    """Hours a received file stays in the spool after its study was triaged by the active model
    version (0: removed at the next retention run). Rows stay."""

    spool_prune_interval_s: float = Field(default=300.0, gt=0)
    """How often the gateway runs spool retention."""

    spool_min_free_gb: float = Field(default=1.0, ge=0)
    """High-water mark: below this much free space on the spool's filesystem the gateway answers
    C-STORE with 0xA700 (out of resources); 0: no floor."""

    spool_max_gb: float = Field(default=0.0, ge=0)
    """High-water mark: the spool's files may take at most this much; 0: no cap."""

    # Worker
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Inference device."""

    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """CPU inference precision; auto uses bf16 where it is faster and agrees with fp32 to 1e-2 in
    probability."""

    batch_size: int = Field(default=8, ge=1)
    """Images scored per forward pass."""

    worker_studies: int = Field(default=4, ge=1, le=64)
    """Studies one worker process takes from the broker and scores at once (task threads); their
    images share forward passes of up to CXR_BATCH_SIZE."""

    cpu_threads: int = Field(default=0, ge=0, le=1024)
    """Threads the model's forward pass uses on the CPU (PyTorch's intra-op threads); 0: PyTorch's
    default, one per core. Where several CPU workers share a machine, give each cores / workers:
    two workers with two threads each on 2 cores made each triage take 1-5 s instead of 0.2."""

    batch_wait_ms: float = Field(default=20.0, ge=0, le=1000)
    """Longest an image waits for other studies' images to fill a batch; a study scored alone never
    waits."""

    backlog_lanes: bool = True
    """Move studies that arrive behind others to a backlog queue that the worker serves in turn with
    the queue of new arrivals, so a study arriving during a burst is scored within a few studies
    instead of after the whole burst."""

    heatmaps: bool = False
    """Compute a Grad-CAM heatmap of each study's scored image (shown on the study page; sent as a
    Secondary Capture to destinations that ask for it)."""

    max_pixels: int = Field(default=50_000_000, ge=1)
    """Largest image (rows x columns of one frame) the worker decodes; a larger one is skipped with
    its reason, from the header, before any pixel is decoded."""

    max_frames: int = Field(default=4, ge=1)
    """Most frames an image may have to be decoded (decoding reads every frame)."""

    max_deliveries: int = Field(default=5, ge=1)
    """A study whose triage task was delivered this many times without finishing (its worker died
    each time) is parked as failed with the reason, not tried again."""

    pseudonym_key: SecretStr | None = None
    """Key (>= 16 characters) of the keyed patient pseudonyms; default: one generated once in
    CXR_DATA_DIR/pseudonym.key. Every gateway of a site needs the same."""

    # Worklist
    worklist_phi: bool = False
    """Keep and show Accession Number, study date, study description, age band and sex on the
    worklist and study page. PHI: shown behind the radiologist role only, never in logs, broker
    messages or audit details. On in the demo."""

    viewer_url_template: str = ""
    """Link to open a study in a viewer, with {study_instance_uid} (e.g.
    https://pacs/ohif/viewer?StudyInstanceUIDs={study_instance_uid}); empty: no link."""

    # Web
    web_host: str = "127.0.0.1"
    """Address the web server binds."""

    web_port: int = Field(default=8000, ge=1, le=65535)
    """Web server port."""

    web_secure_cookies: bool = False
    """Mark login cookies Secure even on plain HTTP requests: set it when a TLS-terminating proxy is
    in front of the web (cookies are Secure on HTTPS anyway)."""

    web_session_idle_minutes: float = Field(default=30.0, gt=0)
    """A web login ends after this many minutes unused."""

    web_session_max_hours: float = Field(default=12.0, gt=0)
    """A web login ends this many hours after it began."""

    web_auth_limit: int = Field(default=10, ge=1)
    """Login attempts and refused requests per client address per minute; more are answered 429
    (refusals are audited once a minute per address, with a count)."""

    # Results (SR and heatmap exports, flag notifications)
    results_config: Path | None = None
    """TOML file naming the result destinations: DICOM peers (SR, heatmap), webhooks and HL7 MLLP
    receivers (see docs/deploy.md); empty: nothing is sent."""

    results_queue: str = "cxr-results"
    """Celery queue of exports and notifications (its own, so a slow PACS never delays scoring)."""

    result_max_attempts: int = Field(default=6, ge=1, le=100)
    """Attempts of one export or notification."""

    result_backoff_s: float = Field(default=30.0, gt=0)
    """Delay before the first retry of a transient failure; doubles each time."""

    result_sweep_s: float = Field(default=15.0, gt=0)
    """How often the results worker looks for due retries and for triage events whose message was
    lost."""

    result_timeout_s: float = Field(default=30.0, gt=0)
    """Network timeout of one export or notification."""

    # Audit
    syslog_url: str = ""
    """Syslog receiver for the audit events (IHE ATNA, RFC 5424): udp://HOST:514, tcp://HOST:514 or
    tls://HOST:6514[?ca=FILE&cert=FILE&key=FILE]; empty: no export."""

    # Monitoring
    drift_window_days: float = Field(default=7.0, gt=0)
    """Drift window: at most the last this many days."""

    drift_window_studies: int = Field(default=500, ge=10)
    """Drift window: at most the last this many studies."""

    drift_baseline_studies: int = Field(default=500, ge=10)
    """Production baseline: the first this many studies after activation (unless an admin pins a
    period)."""

    drift_min_studies: int = Field(default=100, ge=2)
    """Windows with fewer studies say 'too few studies'."""

    drift_alpha: float = Field(default=0.01, gt=0, lt=1)
    """Alert level of the BH-corrected drift p-values."""

    drift_interval_s: float = Field(default=86_400.0, gt=0)
    """How often beat runs the drift job (seconds)."""

    subgroup_min_studies: int = Field(default=30, ge=2)
    """Subgroups with fewer labelled studies say 'too few'."""

    recalibration_labels: int = Field(default=200, ge=20)
    """Labels a recalibration needs; beat starts one when this many new labels have accumulated
    since the last."""

    audit_key: SecretStr | None = None
    """Key (>= 16 characters) of the audit chain's HMAC, which the database does not hold; default:
    one generated once in CXR_DATA_DIR/audit.key. Every process of a site needs the same."""

    audit_anchor_file: Path | None = None
    """Append-only file outside the store that receives the audit chain's head (`audit verify
    --anchors` checks it); default CXR_DATA_DIR/audit-anchors.log."""

    audit_anchor_interval_s: float = Field(default=60.0, ge=0)
    """Seconds between two anchors written by one process (0: after every write that audits); a
    process also anchors when it stops."""

    @field_validator("allowed_calling_aes", mode="before")
    @classmethod
    def _split_aes(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _check_aes(cls, value: list[str]) -> list[str]:
        return [_check_ae_title(v, "CXR_ALLOWED_CALLING_AES") for v in value]

    @field_validator("viewer_url_template")
    @classmethod
    def _check_viewer(cls, value: str) -> str:
        value = value.strip()
        if value and (
            not value.startswith(("http://", "https://")) or "{study_instance_uid}" not in value
        ):
            raise ValueError(
                "must be an http(s) URL containing {study_instance_uid}, e.g. "
                "https://pacs/ohif/viewer?StudyInstanceUIDs={study_instance_uid}"
            )
        if value:
            try:
                value.format(study_instance_uid="1.2.3")
            except (KeyError, IndexError, ValueError):
                raise ValueError("may hold no placeholder but {study_instance_uid}") from None
        return value

    @field_validator("ae_title")
    @classmethod
    def _check_own_ae(cls, value: str) -> str:
        return _check_ae_title(value, "CXR_AE_TITLE")

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.dicom_tls_cert is None) != (self.dicom_tls_key is None):
            raise ValueError(
                "CXR_DICOM_TLS_CERT and CXR_DICOM_TLS_KEY are set together or not at all"
            )
        if self.dicom_tls_ca is not None and self.dicom_tls_cert is None:
            raise ValueError("CXR_DICOM_TLS_CA needs CXR_DICOM_TLS_CERT and CXR_DICOM_TLS_KEY")
        return self

    @property
    def max_instance_bytes(self) -> int:
        return int(self.max_instance_mb * 1024 * 1024)

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.data_dir = Path(self.data_dir).expanduser().absolute()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'cxr-triage.db'}"
        for field, name in _UNDER_DATA_DIR.items():
            path = getattr(self, field) or self.data_dir / name
            setattr(self, field, Path(path).expanduser().absolute())
        return self

    @property
    def spool_path(self) -> Path:
        return _filled(self.spool_dir)

    @property
    def model_path(self) -> Path:
        return _filled(self.model_dir)

    def heatmap_file(self, study_uid: str, model_version: str) -> Path:
        """Where the worker keeps a study's heatmap arrays by a model version (``.npz``)."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_version)
        return self.data_dir / "heatmaps" / study_uid / f"{safe}.npz"

    @property
    def anchor_path(self) -> Path:
        return _filled(self.audit_anchor_file)

    @property
    def owner_database_url(self) -> str:
        """The URL migrations run with: CXR_MIGRATION_DATABASE_URL, else CXR_DATABASE_URL."""
        return self.migration_database_url or self.database_url

    @property
    def broker_dir(self) -> Path:
        """Folder of the embedded filesystem broker (used when CXR_BROKER_URL is empty)."""
        return self.data_dir / "broker"

    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url or self.broker_url.startswith("filesystem://")


# The paths that default to a name under CXR_DATA_DIR: field -> that name.
_UNDER_DATA_DIR = {
    "spool_dir": "spool",
    "model_dir": "models",
    "audit_anchor_file": "audit-anchors.log",
}


def _filled(path: Path | None) -> Path:
    """A path field that ``Settings._fill_defaults`` has set (optional only as an input)."""
    assert path is not None, "Settings._fill_defaults fills every path under CXR_DATA_DIR"
    return path


@functools.cache
def get_settings() -> Settings:
    """Read the settings once, at an entry point."""
    return Settings()
