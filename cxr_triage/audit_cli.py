"""``cxr-triage audit``: query the audit trail and verify that it was not altered."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from cxr_triage.settings import get_settings
from cxr_triage.store_command import cli_actor
from governance.audit import Action, Outcome, record, record_audit_use
from governance.audit.query import (
    AuditQuery,
    AuditRecord,
    add_decided_by,
    iter_events,
    parse_time,
    query_events,
)
from governance.audit.verify import VerifyResult, parse_anchor, verify_chain
from governance.db import Store
from governance.errors import StoreUnavailable

logger = logging.getLogger(__name__)

KNOWN_ACTIONS = {value for key, value in vars(Action).items() if key.isupper()}
CSV_COLUMNS = (
    "id", "occurred_at", "actor", "actor_address", "action", "event_code", "object_type",
    "object_uid", "outcome", "detail", "decided_by", "prev_hash", "row_hash",
)  # fmt: skip

VERIFY_EPILOG = """\
What verify proves: every event's content still gives its hash, and every event names the hash
of the one before it, so an edited, deleted or reordered event is found and named. What the
chain alone cannot prove: that no events were deleted from the END of the trail, or that the
trail was not rewritten from some event on with every later hash recomputed (the hashes carry no
secret). For that, keep an anchor outside the database -- the "anchor ID:HASH" this command
prints, or the id/hash of any event in the syslog export (CXR_SYSLOG_URL) -- and pass it back
with --expect-head: verify then fails unless that event is still there with that hash.
"""


def _time_arg(value: str) -> dt.datetime:
    try:
        return parse_time(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _anchor_arg(value: str) -> str:
    try:
        parse_anchor(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage audit",
        description="The audit trail (CXR_DATABASE_URL): who did what to which study or "
        "setting, when, and how it ended; events carry DICOM PS3.15 event codes. Every use of "
        "this command is itself recorded (110101 Audit Log Used).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    q = sub.add_parser(
        "query",
        help="list events by time, actor, action, study and outcome",
        description="List audit events matching every filter given, oldest first (the newest "
        "--limit of them). For the events that triaged a study, the model version, its "
        "SHA-256, the policy version and tau are shown with who approved the policy and who "
        "activated the model: `cxr-triage audit query --study UID` answers which model and "
        "threshold decided a study.",
    )
    q.add_argument(
        "--since",
        type=_time_arg,
        metavar="TIME",
        help="from this time: ISO 8601 (UTC when no zone) or an age: 30m, 24h, 7d",
    )
    q.add_argument("--until", type=_time_arg, metavar="TIME", help="before this time (same forms)")
    q.add_argument("--actor", help="this actor exactly, or a pattern with * (e.g. 'cli:*')")
    q.add_argument(
        "--action",
        action="append",
        default=[],
        metavar="ACTION",
        help="this action (repeatable), e.g. study_triaged, policy_set",
    )
    q.add_argument(
        "--code",
        action="append",
        default=[],
        metavar="CODE",
        help="this DICOM event code (repeatable), e.g. 110104",
    )
    q.add_argument(
        "--study",
        "--object",
        dest="object_uid",
        metavar="UID",
        help="about this Study Instance UID (or model version, or MODEL/vN policy)",
    )
    q.add_argument("--outcome", help=f"this outcome ({', '.join(Outcome.ALL)})")
    q.add_argument(
        "--limit",
        type=int,
        default=1000,
        help="at most this many events, the newest (default 1000; 0: all)",
    )
    q.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="output format (default table); with --limit 0, csv and json stream the whole trail",
    )
    q.add_argument("--user", help="who is asking, recorded in the trail (default: the OS user)")
    v = sub.add_parser(
        "verify",
        help="check the hash chain; name the first edited, deleted or reordered event",
        description="Walk the whole trail and check each event's hash and link. Prints "
        "'audit trail intact: N events, head hash ...' and exits 0, or names the first bad "
        "event and why, and exits 1.",
        epilog=VERIFY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument(
        "--expect-head",
        type=_anchor_arg,
        metavar="[ID:]HASH",
        help="an anchor kept outside the database: that event must still be in the "
        "trail with that hash",
    )
    v.add_argument(
        "--anchors",
        nargs="?",
        const="",
        metavar="FILE",
        help="check every head anchored in the append-only anchor file (default "
        "CXR_AUDIT_ANCHOR_FILE): each event must still be in the trail with that hash",
    )
    v.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    v.add_argument("--user", help="who is asking, recorded in the trail (default: the OS user)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.command == "query":
        if args.limit < 0:
            parser.error("--limit must be 0 (all) or more")
        if args.since and args.until and args.since >= args.until:
            parser.error("--since must be before --until")
    settings = get_settings()
    anchors: list[tuple[int, str]] = []
    if args.command == "verify" and args.anchors is not None:
        from governance.audit_key import read_anchors

        path = Path(args.anchors) if args.anchors else settings.anchor_path
        anchors = read_anchors(path)  # ConfigError: one line, exit 2
        if not anchors:
            print(f"note: no anchors in {path} yet", file=sys.stderr)
    args.anchor_list = anchors
    store = Store.open(settings)
    from governance.audit.export import configure_export

    exporter = configure_export(settings.syslog_url)
    actor = cli_actor(args.user)
    try:
        if args.command == "query":
            return _query(store, args, actor, sys.stdout)
        return _verify(store, args, actor, sys.stdout)
    finally:
        if exporter is not None:
            configure_export(None)  # sends what is queued (our own event) before exiting
        store.dispose()


def _query(store: Store, args: argparse.Namespace, actor: str, out: TextIO) -> int:
    unknown = sorted(set(args.action) - KNOWN_ACTIONS)
    if unknown:
        print(f"note: not a known action: {', '.join(unknown)}", file=sys.stderr)
    query = AuditQuery(
        since=args.since,
        until=args.until,
        actor=args.actor,
        actions=tuple(args.action),
        event_codes=tuple(args.code),
        object_uid=args.object_uid,
        outcome=args.outcome,
        limit=args.limit or None,
        newest_first=bool(args.limit),
    )
    with store.read() as session:
        if args.limit:
            # The newest `limit` events, shown oldest first.
            records: Iterable[AuditRecord] = list(reversed(query_events(session, query)))
        else:
            records = _stream_records(session, query)
        count = _write(records, args.format, out, show_decisions=args.object_uid is not None)
    _record_use(
        store,
        actor,
        "query",
        {"filters": query.as_detail(), "returned": count, "format": args.format},
    )
    return 0


def _stream_records(session: Any, query: AuditQuery, chunk: int = 1000) -> Iterator[AuditRecord]:
    batch: list[AuditRecord] = []
    for event in iter_events(session, query, chunk_size=chunk):
        batch.append(
            AuditRecord(**{k: getattr(event, k) for k in CSV_COLUMNS if k != "decided_by"})
        )
        if len(batch) == chunk:
            yield from add_decided_by(session, batch)
            batch = []
    yield from add_decided_by(session, batch)


def _write(records: Iterable[AuditRecord], fmt: str, out: TextIO, *, show_decisions: bool) -> int:
    count = 0
    if fmt == "json":
        out.write("[")
        for count, r in enumerate(records, 1):
            out.write(("\n" if count == 1 else ",\n") + json.dumps(r.to_dict(), default=str))
        out.write("\n]\n" if count else "]\n")
        return count
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for r in records:
            count += 1
            row = r.to_dict()
            for key in ("detail", "decided_by"):
                row[key] = json.dumps(row[key], sort_keys=True) if row[key] is not None else ""
            writer.writerow([row[c] if row[c] is not None else "" for c in CSV_COLUMNS])
        return count
    rows = list(records)
    _write_table(rows, out)
    if show_decisions:
        for r in rows:
            if r.action == Action.STUDY_TRIAGED and r.decided_by is not None:
                _write_decision(r, out)
    return len(rows)


def _write_table(rows: list[AuditRecord], out: TextIO) -> None:
    if not rows:
        print("no audit events match", file=out)
        return
    header = ("id", "time (UTC)", "actor", "action", "code", "outcome", "object", "detail")
    table = [header] + [
        (
            str(r.id),
            r.occurred_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            r.actor + (f"@{r.actor_address}" if r.actor_address else ""),
            r.action,
            r.event_code or "-",
            r.outcome,
            r.object_uid or "-",
            _summary(r),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip(), file=out)


def _summary(r: AuditRecord) -> str:
    d = r.decided_by
    if d is not None:
        policy = d["policy"] or {}
        flagged = " FLAGGED" if r.detail.get("flagged") else ""
        probability = r.detail.get("probability")
        score = f"p={probability:.3f} " if isinstance(probability, float) else ""
        return (
            f"{score}tau={d['tau']} model={d['model_version']} "
            f"sha256={str(d['model_sha256'])[:12]} policy=v{d['policy_version']} "
            f"approved_by={policy.get('approved_by', '?')}{flagged}"
        )
    return " ".join(f"{key}={_short(value)}" for key, value in sorted(r.detail.items()))


def _short(value: object) -> str:
    text = json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _write_decision(r: AuditRecord, out: TextIO) -> None:
    d = r.decided_by or {}
    policy = d.get("policy")
    matches = {
        True: "matches the registry",
        False: "DIFFERS from the registry",
        None: "model not in the registry",
    }[d.get("model_sha256_matches_registry")]
    lines = [
        f"\nstudy {r.object_uid}: decided at {r.occurred_at.isoformat()} (event {r.id})",
        f"  model version   {d.get('model_version')}",
        f"  model sha256    {d.get('model_sha256')} ({matches})",
        f"  activated by    {d.get('model_activated_by') or '?'} at "
        f"{d.get('model_activated_at') or '?'}",
        f"  policy          v{d.get('policy_version')}, tau {d.get('tau')}"
        + (f" ({policy['operating_point']})" if policy else " (policy not found)"),
    ]
    if policy:
        lines += [
            f"  approved by     {policy['approved_by']} (set by {policy['set_by'] or '?'}, "
            f"effective {policy['effective_from']})",
            f"  rationale       {policy['rationale']}",
        ]
    probability = r.detail.get("probability")
    lines.append(
        f"  result          probability {probability}, "
        + ("flagged" if r.detail.get("flagged") else "not flagged")
    )
    print("\n".join(lines), file=out)


def _verify(store: Store, args: argparse.Namespace, actor: str, out: TextIO) -> int:
    with store.read() as session:
        result = verify_chain(session, expect_head=args.expect_head, anchors=args.anchor_list)
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2), file=out)
    else:
        _write_verify(result, out)
    summary = {k: v for k, v in result.to_dict().items() if k != "problems"}
    outcome = Outcome.SUCCESS if result.ok else Outcome.FAILURE
    _record_use(store, actor, "verify", summary, outcome=outcome, tampered=not result.ok)
    return 0 if result.ok else 1


def _write_verify(result: VerifyResult, out: TextIO) -> None:
    if result.ok:
        checked = f" ({result.anchors_checked} anchor(s) found)" if result.anchor_checked else ""
        print(
            f"audit trail intact: {result.events} events, head hash {result.head_hash}{checked}\n"
            f"anchor {result.anchor} (keep it outside the database; "
            "pass it to --expect-head later)",
            file=out,
        )
        return
    first = result.first_problem
    assert first is not None
    print(f"audit trail ALTERED: first bad event {first.event_id}: {first.message}", file=out)
    for p in result.problems[1:10]:
        print(f"  then event {p.event_id}: {p.message}", file=out)
    print(
        f"{result.problem_count} problem(s) in {result.events} events walked; "
        f"stored head {result.anchor}",
        file=out,
    )


def _record_use(
    store: Store,
    actor: str,
    operation: str,
    detail: dict[str, Any],
    *,
    outcome: str = Outcome.SUCCESS,
    tampered: bool = False,
) -> None:
    def work(session: Any) -> None:
        record_audit_use(session, actor=actor, operation=operation, detail=detail, outcome=outcome)
        if tampered:
            record(
                session,
                "audit_trail",
                actor=actor,
                action=Action.AUDIT_TAMPER_DETECTED,
                outcome=Outcome.FAILURE,
                detail=detail,
            )

    try:
        store.run(work)
    except StoreUnavailable as exc:
        # The answer was given; say plainly that this use of the log went unrecorded.
        print(
            f"warning: this {operation} could not be recorded in the trail: {exc}", file=sys.stderr
        )
