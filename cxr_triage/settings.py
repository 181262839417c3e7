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

    model_config = SettingsConfigDict(
        env_prefix="CXR_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    data_dir: Path = Field(
        default=Path("var"),
        description="Folder for the embedded defaults: SQLite store, spool, broker, models.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL of the store; empty: sqlite file in CXR_DATA_DIR.",
    )
    broker_url: str = Field(
        default="",
        description="Celery broker URL (redis://...); empty: kombu filesystem broker in "
        "CXR_DATA_DIR.",
    )
    queue: str = Field(default="cxr-triage", description="Celery queue the studies go to.")
    spool_dir: Path | None = Field(
        default=None, description="Where received instances are kept; default CXR_DATA_DIR/spool."
    )
    model_dir: Path | None = Field(
        default=None, description="Where model files are kept; default CXR_DATA_DIR/models."
    )

    # DICOM gateway
    ae_title: str = Field(default="CXRTRIAGE", description="Our AE title.")
    dicom_host: str = Field(default="0.0.0.0", description="Address the DICOM gateway binds.")
    dicom_port: int = Field(default=11112, ge=1, le=65535, description="DICOM port.")
    allowed_calling_aes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated calling AE titles accepted; empty accepts all (logged).",
    )
    max_pdu: int = Field(
        default=1_048_576,
        ge=0,
        description="Largest PDU we accept, bytes (0: unlimited). 16 KB PDUs cost ~1.8x "
        "throughput.",
    )
    stable_age_s: float = Field(
        default=3.0,
        gt=0,
        description="A study on an open or aborted association is queued after this many "
        "seconds without a new instance.",
    )
    network_timeout_s: float = Field(default=60.0, gt=0, description="DICOM network timeout.")
    requeue_after_s: float = Field(
        default=900.0,
        gt=0,
        description="A study queued this long ago and still not triaged is queued again (its "
        "message may have died with a worker; triage is idempotent, so a duplicate costs little).",
    )
    reconcile_max_attempts: int = Field(
        default=5,
        ge=1,
        description="Automatic requeues of a study not triaged (each waiting twice as long as "
        "the last, from CXR_REQUEUE_AFTER_S) before the reconciler parks it as failed.",
    )
    sweep_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="How often the gateway asks the store for studies to queue: never queued "
        "(broker down, crash), stale (message lost), or found by the reconciler.",
    )
    spool_retention_h: float = Field(
        default=72.0,
        ge=0,
        description="Hours a received file stays in the spool after its study was triaged by "
        "the active model version (0: removed at the next retention run). Rows stay.",
    )
    spool_prune_interval_s: float = Field(
        default=300.0, gt=0, description="How often the gateway runs spool retention."
    )
    spool_min_free_gb: float = Field(
        default=1.0,
        ge=0,
        description="High-water mark: below this much free space on the spool's filesystem "
        "the gateway answers C-STORE with 0xA700 (out of resources); 0: no floor.",
    )
    spool_max_gb: float = Field(
        default=0.0,
        ge=0,
        description="High-water mark: the spool's files may take at most this much; 0: no cap.",
    )

    # Worker
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Inference device.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="CPU inference precision; auto uses bf16 where it is faster and agrees "
        "with fp32 to 1e-2 in probability.",
    )
    batch_size: int = Field(default=8, ge=1, description="Images scored per forward pass.")

    pseudonym_key: SecretStr | None = Field(
        default=None,
        description="Key (>= 16 characters) of the keyed patient pseudonyms; default: one "
        "generated once in CXR_DATA_DIR/pseudonym.key. Every gateway of a site needs the same.",
    )

    # Web
    web_host: str = Field(default="127.0.0.1", description="Address the web server binds.")
    web_port: int = Field(default=8000, ge=1, le=65535, description="Web server port.")
    web_secure_cookies: bool = Field(
        default=False,
        description="Mark login cookies Secure even on plain HTTP requests: set it when a "
        "TLS-terminating proxy is in front of the web (cookies are Secure on HTTPS anyway).",
    )

    # Audit
    syslog_url: str = Field(
        default="",
        description="Syslog receiver for the audit events (IHE ATNA, RFC 5424): udp://HOST:514, "
        "tcp://HOST:514 or tls://HOST:6514[?ca=FILE&cert=FILE&key=FILE]; empty: no export.",
    )

    @field_validator("allowed_calling_aes", mode="before")
    @classmethod
    def _split_aes(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _check_aes(cls, value: list[str]) -> list[str]:
        return [_check_ae_title(v, "CXR_ALLOWED_CALLING_AES") for v in value]

    @field_validator("ae_title")
    @classmethod
    def _check_own_ae(cls, value: str) -> str:
        return _check_ae_title(value, "CXR_AE_TITLE")

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.data_dir = Path(self.data_dir).expanduser().absolute()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'cxr-triage.db'}"
        if self.spool_dir is None:
            self.spool_dir = self.data_dir / "spool"
        if self.model_dir is None:
            self.model_dir = self.data_dir / "models"
        self.spool_dir = Path(self.spool_dir).expanduser().absolute()
        self.model_dir = Path(self.model_dir).expanduser().absolute()
        return self

    @property
    def spool_path(self) -> Path:
        assert self.spool_dir is not None
        return self.spool_dir

    @property
    def model_path(self) -> Path:
        assert self.model_dir is not None
        return self.model_dir

    @property
    def broker_dir(self) -> Path:
        """Folder of the embedded filesystem broker (used when CXR_BROKER_URL is empty)."""
        return self.data_dir / "broker"

    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url or self.broker_url.startswith("filesystem://")


@functools.cache
def get_settings() -> Settings:
    """Read the settings once, at an entry point."""
    return Settings()
