"""The site's key for patient pseudonyms (HMAC-SHA256 of the Patient ID; see audit.pseudonym).

A pseudonym links a patient's studies in the store and the audit without keeping the Patient
ID. Every gateway of a site must use the same key, so production sets ``CXR_PSEUDONYM_KEY``;
the embedded default generates one key once and keeps it in ``CXR_DATA_DIR/pseudonym.key``
(readable by its owner only).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from cxr_triage.settings import Settings
from governance.errors import ConfigError

logger = logging.getLogger(__name__)

KEY_FILE = "pseudonym.key"
MIN_KEY_BYTES = 16


def load_key(settings: Settings) -> bytes:
    """The pseudonym key: CXR_PSEUDONYM_KEY, else the data folder's key file (made once).

    Raises
    ------
    ConfigError
        The configured key is shorter than 16 bytes, or the key file cannot be read or made.
    """
    if settings.pseudonym_key is not None:
        key = settings.pseudonym_key.get_secret_value().encode("utf-8")
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"CXR_PSEUDONYM_KEY must be at least {MIN_KEY_BYTES} characters")
        return key
    path = settings.data_dir / KEY_FILE
    try:
        return _read_or_create(path)
    except OSError as exc:
        raise ConfigError(
            f"cannot read or create the pseudonym key {path}: {exc.strerror}; set CXR_PSEUDONYM_KEY"
        ) from None


def _read_or_create(path: Path, what: str = "pseudonym key", level: int = logging.WARNING) -> bytes:
    if path.is_file():
        key = path.read_bytes().strip()
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"the {what} {path} is too short; remove it or fix it")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode("ascii")
    # O_EXCL: two processes starting at once must not each write a different key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_or_create(path, what, level)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
        fh.flush()
        os.fsync(fh.fileno())
    logger.log(
        level,
        "generated the %s in %s; keep it, and share it between the processes of a site",
        what,
        path,
    )
    return key
