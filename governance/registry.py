"""The model registry: versions, their files' SHA-256, and which one is active.

The registry refuses a file whose checksum does not match what was registered, both when a
version is registered with an expected checksum and whenever a worker loads it
(:func:`verify_model_file`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance import audit
from governance.errors import ModelIntegrityError, NoActiveModel, NotFound, TriageError
from governance.models import ModelStatus, ModelVersion, utcnow
from governance.policies import policy_in_force

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_model_file(path: str | Path, sha256: str) -> Path:
    """Check that ``path`` exists and hashes to ``sha256``; return it as a Path.

    Raises
    ------
    ModelIntegrityError
        The file is missing or unreadable, or its checksum differs.
    """
    file = Path(path)
    try:
        actual = sha256_file(file)
    except OSError as exc:
        raise ModelIntegrityError(f"model file {file} cannot be read: {exc.strerror}") from None
    if actual != sha256:
        raise ModelIntegrityError(
            f"model file {file} has SHA-256 {actual[:12]}..., registered {sha256[:12]}...; "
            "refusing to load it"
        )
    return file


def register_model(
    session: Session,
    *,
    version: str,
    path: str | Path,
    input_size: int,
    architecture: str = "resnet50",
    temperature: float = 1.0,
    clinical: bool = False,
    description: str | None = None,
    details: dict[str, Any] | None = None,
    expected_sha256: str | None = None,
    actor: str = "system",
) -> ModelVersion:
    """Register a model file as a new version (status ``registered``, not yet serving).

    Raises
    ------
    ValueError
        ``version`` is empty, ``input_size`` or ``temperature`` is not positive.
    TriageError
        The version exists already.
    ModelIntegrityError
        The file is missing, or ``expected_sha256`` is given and differs.
    """
    if not version or len(version) > 64:
        raise ValueError(f"version must be 1-64 characters, got {version!r}")
    if input_size <= 0:
        raise ValueError(f"input_size must be positive, got {input_size}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    file = Path(path).absolute()
    if not file.is_file():
        raise ModelIntegrityError(f"model file {file} does not exist")
    checksum = sha256_file(file)
    if expected_sha256 is not None and checksum != expected_sha256:
        raise ModelIntegrityError(
            f"model file {file} has SHA-256 {checksum[:12]}..., expected {expected_sha256[:12]}..."
        )
    if session.scalar(select(ModelVersion.id).where(ModelVersion.version == version)):
        raise TriageError(f"model version {version!r} is registered already")
    model = ModelVersion(
        version=version,
        path=str(file),
        sha256=checksum,
        architecture=architecture,
        input_size=input_size,
        temperature=float(temperature),
        clinical=clinical,
        description=description,
        details=details or {},
        status=ModelStatus.REGISTERED,
    )
    session.add(model)
    session.flush()
    audit.record(
        session,
        "model_version",
        version,
        actor=actor,
        action=audit.Action.MODEL_REGISTERED,
        detail={
            "sha256": checksum,
            "architecture": architecture,
            "input_size": input_size,
            "temperature": float(temperature),
            "clinical": clinical,
        },
    )
    logger.info("registered model version %s (sha256 %s)", version, checksum[:12])
    return model


def get_model(session: Session, version: str) -> ModelVersion:
    model = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
    if model is None:
        raise NotFound(f"no model version {version!r} (see: cxr-triage model list)")
    return model


def list_models(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))


def active_model(session: Session) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion)
        .where(ModelVersion.status == ModelStatus.ACTIVE)
        .order_by(ModelVersion.activated_at.desc())
        .limit(1)
    )


def activate_model(
    session: Session,
    version: str,
    *,
    actor: str = "system",
    actor_address: str | None = None,
    action: str = audit.Action.MODEL_ACTIVATED,
) -> ModelVersion:
    """Make ``version`` the one that serves; the previous active version becomes retired.

    Workers read the active version at every task, so they pick the change up with their next
    study, without a restart.

    Parameters
    ----------
    actor, actor_address
        Who activates it (a person, ``cli:USER``), and from where; recorded in the audit.
    action
        The audit action: ``model_activated``, or ``model_rolled_back`` for
        :func:`rollback_model`.

    Raises
    ------
    NoActiveModel
        The version has no threshold policy: a model never serves without a tau.
    """
    model = get_model(session, version)
    # A policy that takes effect only later would leave the workers without a tau until then.
    if policy_in_force(session, model.id) is None:
        raise NoActiveModel(
            f"model version {version!r} has no threshold policy in force; set one first "
            "(cxr-triage policy set)"
        )
    previous = active_model(session)
    if previous is not None and previous.id != model.id:
        previous.status = ModelStatus.RETIRED
    model.status = ModelStatus.ACTIVE
    model.activated_at = utcnow()
    audit.record(
        session,
        "model_version",
        version,
        actor=actor,
        actor_address=actor_address,
        action=action,
        detail={"sha256": model.sha256, "previous": previous.version if previous else None},
    )
    # Every activation starts a recalibration job (it waits for labels until there are some).
    from governance.recalibration import on_activation

    on_activation(session, model)
    logger.info("activated model version %s", version)
    return model


def rollback_model(
    session: Session, *, actor: str = "system", actor_address: str | None = None
) -> ModelVersion:
    """Activate again the version that was active before the current one.

    Raises
    ------
    NotFound
        No version was active before (nothing to roll back to).
    """
    previous = session.scalar(
        select(ModelVersion)
        .where(ModelVersion.status == ModelStatus.RETIRED, ModelVersion.activated_at.is_not(None))
        .order_by(ModelVersion.activated_at.desc())
        .limit(1)
    )
    if previous is None:
        raise NotFound("no previously active version to roll back to")
    return activate_model(
        session,
        previous.version,
        actor=actor,
        actor_address=actor_address,
        action=audit.Action.MODEL_ROLLED_BACK,
    )
