"""``cxr-triage study``: list studies by status, and queue failed ones again."""

from __future__ import annotations

import argparse
import json
import sys

from cxr_triage.settings import Settings, get_settings
from cxr_triage.store_command import cli_actor
from governance.db import Store
from governance.reconcile import ALL_STATUSES, MAX_STUDIES, list_studies, prepare_retry


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage study",
        description="Studies in the store: list them (e.g. the failed ones) and queue them for "
        "triage again once the cause is fixed (model file back, memory freed). Shows Study "
        "Instance UIDs and times only, never patient data.",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser(
        "list",
        help="list studies, newest first",
        description="List studies, the most recently received first.",
    )
    ls.add_argument("--status", choices=ALL_STATUSES, help="only studies with this status")
    ls.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    ls.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    rt = sub.add_parser(
        "retry",
        help="queue studies for triage again",
        description="Queue studies for triage again: the given Study Instance UIDs, or with "
        "--failed every failed study (oldest first, at most --limit). Their reconciler "
        "attempts start again; one audit event records who did it. Needs the broker.",
    )
    rt.add_argument("study_uids", nargs="*", metavar="UID", help="Study Instance UIDs")
    rt.add_argument("--failed", action="store_true", help="every failed study")
    rt.add_argument(
        "--limit", type=int, default=100, help=f"at most this many (default 100, max {MAX_STUDIES})"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if not 1 <= args.limit <= MAX_STUDIES:
        parser.error(f"--limit must be between 1 and {MAX_STUDIES}")
    settings = get_settings()
    store = Store.open(settings)
    try:
        if args.action == "list":
            return _list(store, args.status, args.limit, args.json)
        if bool(args.study_uids) == args.failed:
            parser.error("give Study Instance UIDs or --failed (not both)")
        return _retry(store, settings, args.study_uids or None, args.failed, args.limit)
    finally:
        store.dispose()


def _list(store: Store, status: str | None, limit: int, as_json: bool) -> int:
    with store.read() as session:
        studies = list_studies(session, status=status, limit=limit)
    if as_json:
        print(json.dumps([s.as_json() for s in studies], indent=1))
        return 0
    if not studies:
        print("no studies" + (f" with status {status}" if status else ""))
        return 0
    for s in studies:
        detail = (s.status_detail or "").replace("\n", " ")[:80]
        print(
            f"{s.study_instance_uid:<64} {s.status:<10} {s.instances:>3} inst  "
            f"received {s.last_received_at:%Y-%m-%d %H:%M:%S}Z  "
            f"attempts {s.reconcile_attempts}  {detail}".rstrip()
        )
    return 0


def _retry(
    store: Store, settings: Settings, study_uids: list[str] | None, failed: bool, limit: int
) -> int:
    from kombu.exceptions import OperationalError

    from worker.celery_app import make_celery, queue_study

    actor = cli_actor()
    uids = store.run(
        lambda session: prepare_retry(
            session, actor=actor, study_uids=study_uids, failed=failed, limit=limit
        )
    )
    if not uids:
        print("no failed studies to retry")
        return 0
    app = make_celery(settings)
    sent = 0
    try:
        for uid in uids:
            queue_study(app, uid)
            sent += 1
    except (OperationalError, OSError) as exc:  # kombu's, or a socket error of its own
        print(
            f"cxr-triage study: the broker did not take the messages ({exc}); {sent} of "
            f"{len(uids)} sent. The rest are marked queued: the gateway queues them again "
            "after CXR_REQUEUE_AFTER_S, or run this again once the broker answers.",
            file=sys.stderr,
        )
        return 1
    print(f"queued {sent} studies for triage again")
    return 0
