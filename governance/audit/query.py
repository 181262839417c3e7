"""Questions to the audit trail: events by time, actor, action, object and outcome.

Pure functions over a session, shared by ``cxr-triage audit query`` and the web API. For the
events that triaged a study, :func:`query_events` also answers "which model and threshold decided
this study, and who approved them": the model version, its checksum, the policy version and tau
come from the event itself (the worker writes them), and the policy's approver and rationale,
who set the policy and who activated the model are looked up and added as ``decided_by``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from governance.audit.chain import TRIAGE_ACTIONS, Action, event_fields
from governance.models import AuditEvent, ModelVersion, ThresholdPolicy, policy_uid

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_ACTIVATIONS = (Action.MODEL_ACTIVATED, Action.MODEL_ROLLED_BACK)


def parse_time(value: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """Read a point in time: ISO 8601, or an age such as ``30m``, ``24h``, ``7d``, ``2w``.

    Parameters
    ----------
    value
        ``2026-11-25``, ``2026-11-25T08:00``, ``2026-11-25T08:00:00+01:00`` (a time without a
        zone is taken as UTC), or a number and a unit (s, m, h, d, w) meaning that long ago.
    now
        The present, for relative values (default: the current UTC time).

    Raises
    ------
    ValueError
        ``value`` is neither.
    """
    match = _RELATIVE.match(value)
    if match:
        amount, unit = float(match.group(1)), match.group(2)
        try:
            return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(**{_UNITS[unit]: amount})
        except OverflowError:
            raise ValueError(f"time {value!r} is further back than the calendar goes") from None
    try:
        when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise ValueError(
            f"time {value!r} is neither ISO 8601 (2026-11-25T08:00Z) nor an age (24h, 7d)"
        ) from None


@dataclass(frozen=True)
class AuditQuery:
    """Filters of an audit query; every one that is set must hold.

    Attributes
    ----------
    since, until
        Events with ``since <= occurred_at < until`` (timezone-aware).
    actor
        Exactly this actor, or a pattern with ``*`` wildcards (``cli:*``).
    actions
        Any of these actions.
    event_codes
        Any of these DICOM event codes (``110104``).
    object_uid
        About this object: a Study Instance UID, a model version, ``MODEL/vN`` for a policy.
    outcome
        Exactly this outcome (``success``, ``refused``, ``failure``).
    after_id, before_id
        Keyset paging: only ids greater than / less than these.
    limit
        At most this many events (None: all).
    newest_first
        Order by id descending (the limit then keeps the newest events).
    """

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    actor: str | None = None
    actions: tuple[str, ...] = ()
    event_codes: tuple[str, ...] = ()
    object_uid: str | None = None
    outcome: str | None = None
    after_id: int | None = None
    before_id: int | None = None
    limit: int | None = 1000
    newest_first: bool = False

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1 (or None for all), got {self.limit}")
        if isinstance(self.actions, str) or isinstance(self.event_codes, str):
            raise TypeError("actions and event_codes must be tuples of strings, not a string")

    def as_detail(self) -> dict[str, Any]:
        """The filters that are set, JSON-ready (what an "audit log used" event records)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if value in (None, (), False):
                continue
            if isinstance(value, dt.datetime):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out


def select_events(query: AuditQuery) -> Select[AuditEvent]:
    """The SELECT of ``query``'s events, ordered by id (without the limit)."""
    stmt = select(AuditEvent)
    if query.since is not None:
        stmt = stmt.where(AuditEvent.occurred_at >= query.since)
    if query.until is not None:
        stmt = stmt.where(AuditEvent.occurred_at < query.until)
    if query.actor is not None:
        if "*" in query.actor:
            pattern = query.actor.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            stmt = stmt.where(AuditEvent.actor.like(pattern.replace("*", "%"), escape="\\"))
        else:
            stmt = stmt.where(AuditEvent.actor == query.actor)
    if query.actions:
        stmt = stmt.where(AuditEvent.action.in_(query.actions))
    if query.event_codes:
        stmt = stmt.where(AuditEvent.event_code.in_(query.event_codes))
    if query.object_uid is not None:
        stmt = stmt.where(AuditEvent.object_uid == query.object_uid)
    if query.outcome is not None:
        stmt = stmt.where(AuditEvent.outcome == query.outcome)
    if query.after_id is not None:
        stmt = stmt.where(AuditEvent.id > query.after_id)
    if query.before_id is not None:
        stmt = stmt.where(AuditEvent.id < query.before_id)
    return stmt.order_by(AuditEvent.id.desc() if query.newest_first else AuditEvent.id)


def iter_events(
    session: Session, query: AuditQuery, *, chunk_size: int = 1000
) -> Iterator[AuditEvent]:
    """Stream ``query``'s events in chunks (keyset on id): memory stays flat for any count.

    Events are expunged from the session as they are loaded (they have no relationships to load).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    remaining = query.limit
    after, before = query.after_id, query.before_id
    while remaining is None or remaining > 0:
        size = chunk_size if remaining is None else min(chunk_size, remaining)
        page = AuditQuery(**{**_fields(query), "after_id": after, "before_id": before})
        events = list(session.scalars(select_events(page).limit(size)))
        for event in events:  # keep the identity map small, whatever the count
            session.expunge(event)
        yield from events
        if len(events) < size:
            return
        if query.newest_first:
            before = events[-1].id
        else:
            after = events[-1].id
        if remaining is not None:
            remaining -= len(events)


@dataclass
class AuditRecord:
    """One event as a query returns it, with ``decided_by`` for the events that triaged a study."""

    id: int
    occurred_at: dt.datetime
    actor: str
    actor_address: str | None
    action: str
    event_code: str | None
    object_type: str | None
    object_uid: str | None
    outcome: str
    detail: dict[str, Any]
    prev_hash: str
    row_hash: str
    decided_by: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 UTC."""
        out = asdict(self)
        out["occurred_at"] = self.occurred_at.astimezone(dt.UTC).isoformat()
        return out


def query_events(session: Session, query: AuditQuery) -> list[AuditRecord]:
    """Run ``query``; triage events get ``decided_by`` (see :func:`add_decided_by`).

    Parameters
    ----------
    session
        A read session.
    query
        The filters, paging and order.

    Returns
    -------
    list of AuditRecord
        In id order (descending when ``query.newest_first``), at most ``query.limit``.
    """
    records = [AuditRecord(**event_fields(event)) for event in iter_events(session, query)]
    return add_decided_by(session, records)


def add_decided_by(session: Session, records: list[AuditRecord]) -> list[AuditRecord]:
    """Fill ``decided_by`` of the triage events among ``records`` (in place; returns them).

    ``decided_by`` holds the model version, the SHA-256 the worker used and whether it is the
    one registered, who activated that version last before the event (and when), the policy
    version and tau used, and the policy's operating point, tau, approver, rationale and
    effective time, with who set it.
    """
    triage = [r for r in records if r.action in TRIAGE_ACTIONS and r.detail.get("model_version")]
    if not triage:
        return records
    versions = sorted({str(r.detail["model_version"]) for r in triage})
    models = {
        m.version: m
        for m in session.scalars(select(ModelVersion).where(ModelVersion.version.in_(versions)))
    }
    policies: dict[tuple[str, int], ThresholdPolicy] = {}
    by_id = {m.id: m.version for m in models.values()}
    if by_id:
        for found in session.scalars(
            select(ThresholdPolicy).where(ThresholdPolicy.model_version_id.in_(by_id))
        ):
            policies[(by_id[found.model_version_id], found.version)] = found
    activations = session.execute(
        select(AuditEvent.id, AuditEvent.object_uid, AuditEvent.actor, AuditEvent.occurred_at)
        .where(AuditEvent.action.in_(_ACTIVATIONS), AuditEvent.object_uid.in_(versions))
        .order_by(AuditEvent.id)
    ).all()
    policy_uids = [policy_uid(version, number) for version, number in policies]
    setters: dict[str | None, str] = {}
    if policy_uids:
        for uid, actor in session.execute(
            select(AuditEvent.object_uid, AuditEvent.actor)
            .where(AuditEvent.action == Action.POLICY_SET, AuditEvent.object_uid.in_(policy_uids))
            .order_by(AuditEvent.id)
        ):
            setters[uid] = actor
    for r in triage:
        version = str(r.detail["model_version"])
        model = models.get(version)
        used_sha = r.detail.get("model_sha256")
        activated = [a for a in activations if a.object_uid == version and a.id < r.id]
        policy_version = r.detail.get("policy_version")
        policy = policies.get((version, policy_version)) if policy_version is not None else None
        r.decided_by = {
            "model_version": version,
            "model_sha256": used_sha,
            "model_sha256_matches_registry": (model.sha256 == used_sha) if model else None,
            "model_activated_by": activated[-1].actor if activated else None,
            "model_activated_at": activated[-1].occurred_at.isoformat() if activated else None,
            "policy_version": policy_version,
            "tau": r.detail.get("tau"),
            "policy": None
            if policy is None
            else _policy(policy, set_by=setters.get(policy_uid(version, policy.version))),
        }
    return records


def _policy(policy: ThresholdPolicy, *, set_by: str | None) -> dict[str, Any]:
    """What ``decided_by`` tells of the policy in force: its terms, approver and setter."""
    return {
        **policy.columns("operating_point", "tau", "approved_by", "rationale", "target_metric"),
        "effective_from": policy.effective_from.isoformat(),
        "set_by": set_by,
    }


def _fields(query: AuditQuery) -> dict[str, Any]:
    return asdict(query)
