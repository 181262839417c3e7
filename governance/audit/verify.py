"""Proof that the audit trail was not altered: walk the hash chain and name the first bad row.

Each row's ``row_hash`` is the SHA-256 of its canonical content, its id and the previous row's
hash (:meth:`AuditEvent.canonical`). Walking the rows in id order finds

- an **edited** row: its content no longer gives its ``row_hash``;
- a **deleted** row: ids jump and the next row's ``prev_hash`` is not the hash of the row
  before the gap (a deleted first row: the first ``prev_hash`` is not the genesis hash);
- **reordered** rows: a row's ``prev_hash`` is not the hash of the row before it, with no gap
  (rows swapped or moved, or the row before it rewritten with a recomputed hash).

What the chain alone cannot show is a deletion of the newest rows, or a trail rewritten from
some row on with every later hash recomputed (the hashes carry no secret). Both are caught by an
*anchor*: the head (``ID:HASH``) printed by an earlier verification or carried by the syslog
export, kept outside the database and given back as ``expect_head``.

The walk streams the rows in chunks (keyset on id), so memory stays flat for millions of rows.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.models import GENESIS_HASH, AuditEvent

logger = logging.getLogger(__name__)

_COLUMNS = (
    AuditEvent.id,
    AuditEvent.occurred_at,
    AuditEvent.actor,
    AuditEvent.actor_address,
    AuditEvent.action,
    AuditEvent.event_code,
    AuditEvent.object_type,
    AuditEvent.object_uid,
    AuditEvent.outcome,
    AuditEvent.detail,
    AuditEvent.prev_hash,
    AuditEvent.row_hash,
)


@dataclass(frozen=True)
class ChainProblem:
    """One place where the chain does not hold.

    Attributes
    ----------
    event_id
        The first bad row: the edited or misplaced row, or the first missing id.
    kind
        ``edited``, ``deleted``, ``reordered`` or ``anchor`` (the anchored head is missing or
        differs: newest rows deleted, or the trail rewritten).
    message
        One line for a person.
    """

    event_id: int
    kind: str
    message: str


@dataclass(frozen=True)
class VerifyResult:
    """What :func:`verify_chain` found.

    Attributes
    ----------
    events
        Rows walked.
    head_id, head_hash
        The newest row's id and stored hash (None and the genesis hash for an empty trail).
    problems
        The first problems found, in id order (at most ``max_problems``).
    problem_count
        All problems found (problems may cascade after the first).
    anchor_checked
        Whether an ``expect_head`` anchor was given and checked.
    """

    events: int
    head_id: int | None
    head_hash: str
    problems: tuple[ChainProblem, ...]
    problem_count: int
    anchor_checked: bool

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def first_problem(self) -> ChainProblem | None:
        return self.problems[0] if self.problems else None

    @property
    def anchor(self) -> str:
        """The head as ``ID:HASH``: keep it outside the database, pass it to ``expect_head``."""
        return f"{self.head_id or 0}:{self.head_hash}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what an "audit log used" event and the API return)."""
        first = self.first_problem
        return {
            "intact": self.ok,
            "events": self.events,
            "head_id": self.head_id,
            "head_hash": self.head_hash,
            "anchor": self.anchor,
            "anchor_checked": self.anchor_checked,
            "problem_count": self.problem_count,
            "first_bad_id": first.event_id if first else None,
            "first_problem": first.kind if first else None,
            "problems": [vars(p) for p in self.problems],
        }


def parse_anchor(value: str) -> tuple[int | None, str]:
    """Read an anchor: ``HASH`` or ``ID:HASH`` (64 hex digits).

    Raises
    ------
    ValueError
        ``value`` is not of that form.
    """
    text = value.strip().lower()
    event_id: int | None = None
    if ":" in text:
        head, text = text.split(":", 1)
        if not head.isdigit():
            raise ValueError(f"expect_head {value!r}: the part before ':' must be an event id")
        event_id = int(head)
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"expect_head {value!r} is not HASH or ID:HASH (64 hex digits)")
    return event_id, text


def verify_chain(
    session: Session,
    *,
    expect_head: str | None = None,
    chunk_size: int = 5000,
    max_problems: int = 20,
) -> VerifyResult:
    """Walk the whole audit trail in id order and check every link of the hash chain.

    Parameters
    ----------
    session
        A read session.
    expect_head
        An anchor kept outside the database, ``HASH`` or ``ID:HASH`` (a head printed by an
        earlier verification, or the hash of an exported event). The trail must still hold
        that row with that hash; this catches deleted newest rows and rewritten trails.
    chunk_size
        Rows fetched per query.
    max_problems
        Problems kept in the result (all are counted).

    Returns
    -------
    VerifyResult
        ``ok`` when every row's hash and link hold (and the anchor, if given, is found).

    Raises
    ------
    ValueError
        ``expect_head`` is malformed, or ``chunk_size``/``max_problems`` is below 1.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if max_problems < 1:
        raise ValueError(f"max_problems must be at least 1, got {max_problems}")
    anchor = parse_anchor(expect_head) if expect_head is not None else None
    found = _Findings(max_problems)
    count = 0
    expected_prev, prev_id = GENESIS_HASH, 0
    anchor_seen: str | None = None  # the stored hash of the anchor's row, once walked past it
    for row in _rows(session, chunk_size):
        count += 1
        if row.prev_hash != expected_prev:
            if row.id > prev_id + 1:
                missing = (
                    f"event {prev_id + 1}"
                    if row.id == prev_id + 2
                    else f"events {prev_id + 1} to {row.id - 1}"
                )
                before = f"event {prev_id}" if prev_id else "the chain's start"
                found.add(
                    prev_id + 1,
                    "deleted",
                    f"deleted: {missing} missing (event {row.id}'s prev_hash is not the hash "
                    f"of {before})",
                )
            else:
                before = f"event {prev_id}" if prev_id else "the chain's start"
                found.add(
                    row.id,
                    "reordered",
                    f"reordered: event {row.id} does not follow {before} (prev_hash chain "
                    "broken: rows swapped or moved, or the row before rewritten)",
                )
        elif _hash(row) != row.row_hash:
            found.add(row.id, "edited", f"edited: event {row.id}'s content does not match its hash")
        if anchor is not None and anchor_seen is None:
            anchor_id, anchor_hash = anchor
            if row.id == anchor_id or (anchor_id is None and row.row_hash == anchor_hash):
                anchor_seen = row.row_hash
        # Go on from what is stored, so one bad row is reported once, not as a cascade.
        expected_prev, prev_id = row.row_hash, row.id
    if anchor is not None:
        _check_anchor(anchor, anchor_seen, prev_id, found)
    result = VerifyResult(
        events=count,
        head_id=prev_id or None,
        head_hash=expected_prev,
        problems=tuple(found.problems),
        problem_count=found.count,
        anchor_checked=anchor is not None,
    )
    logger.log(
        logging.INFO if result.ok else logging.WARNING,
        "audit verification: %d events, %d problems, head %s",
        count,
        found.count,
        result.anchor,
    )
    return result


class _Findings:
    """The problems found so far: the first ``keep`` of them, and how many in all."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.problems: list[ChainProblem] = []
        self.count = 0

    def add(self, event_id: int, kind: str, message: str) -> None:
        self.count += 1
        if len(self.problems) < self.keep:
            self.problems.append(ChainProblem(event_id, kind, message))


def _hash(row: Any) -> str:
    # The frozen canonical form is AuditEvent.canonical; applied to a result row with the same
    # attribute names it spares building an ORM object per row.
    return hashlib.sha256(AuditEvent.canonical(row, row.prev_hash)).hexdigest()


def _check_anchor(
    anchor: tuple[int | None, str], seen: str | None, last_id: int, found: _Findings
) -> None:
    anchor_id, anchor_hash = anchor
    if anchor_id is not None and anchor_id > last_id:
        found.add(
            last_id + 1,
            "anchor",
            f"deleted: the trail ends at event {last_id} but the anchor names event {anchor_id}: "
            f"events {last_id + 1} to {anchor_id} (at least) were deleted",
        )
    elif anchor_id is not None and seen != anchor_hash:
        found.add(
            anchor_id,
            "anchor",
            f"rewritten: event {anchor_id} is not the anchored event (its hash differs): the "
            f"trail was rewritten up to it, or it and later events were deleted and new events "
            "took their ids",
        )
    elif anchor_id is None and seen is None:
        found.add(
            last_id + 1,
            "anchor",
            f"deleted or rewritten: no event has the anchored hash; the trail ends at event "
            f"{last_id}: newest events deleted, or the trail rewritten",
        )


def _rows(session: Session, chunk_size: int) -> Iterator[Any]:
    """Every row's columns in id order, ``chunk_size`` at a time (no ORM objects: flat memory)."""
    last = 0
    while True:
        rows = session.execute(
            select(*_COLUMNS).where(AuditEvent.id > last).order_by(AuditEvent.id).limit(chunk_size)
        ).all()
        yield from rows
        if len(rows) < chunk_size:
            return
        last = rows[-1].id
