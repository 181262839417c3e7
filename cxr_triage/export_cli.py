"""``cxr-triage export``: the result exports and flag notifications, and retrying parked ones."""

from __future__ import annotations

import argparse
import json

from cxr_triage.store_command import cli_actor, parse_and_open
from governance import deliveries
from governance.errors import ConfigError
from governance.models import DeliveryState


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage export",
        description="Result deliveries: SR/heatmap exports to DICOM destinations and flag "
        "notifications (webhook, HL7), with their state, attempts and last error. A failed one "
        "is parked until a person retries it.",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser(
        "list", help="list deliveries", description="List deliveries, newest first."
    )
    ls.add_argument("--state", choices=DeliveryState.ALL, help="only deliveries in this state")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (default: 50)")
    ls.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    rt = sub.add_parser(
        "retry",
        help="retry failed deliveries",
        description="Give failed (or retrying) deliveries a fresh set of attempts, now; the "
        "results worker sends them at its next sweep.",
    )
    rt.add_argument("ids", nargs="*", type=int, metavar="ID", help="delivery ids")
    rt.add_argument("--all-failed", action="store_true", help="every failed delivery")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, _, store = parse_and_open(get_args_parser(), argv)
    if args.action == "list":
        if args.limit < 1:
            raise ConfigError("--limit must be at least 1")
        with store.read() as session:
            rows = [
                deliveries.delivery_dict(r)
                for r in deliveries.list_deliveries(session, state=args.state, limit=args.limit)
            ]
        if args.json:
            for row in rows:
                print(json.dumps(row))
            return 0
        if not rows:
            print("no deliveries")
        for r in rows:
            print(
                f"{r['id']:>6} {r['state']:<9} {r['kind']:<8} {r['destination']:<16} "
                f"{r['attempts']}/{r['max_attempts']} {r['study_instance_uid']}  "
                f"{r['last_error'] or ''}"
            )
        return 0
    if not args.ids and not args.all_failed:
        raise ConfigError("name delivery ids or give --all-failed")
    actor = cli_actor()

    def work(session):  # type: ignore[no-untyped-def]
        ids = list(args.ids)
        if args.all_failed:
            ids += [
                r.id
                for r in deliveries.list_deliveries(
                    session, state=DeliveryState.FAILED, limit=10_000
                )
            ]
        done = []
        for delivery_id in dict.fromkeys(ids):
            try:
                deliveries.retry(session, delivery_id, actor=actor)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            done.append(delivery_id)
        return done

    done = store.run(work)
    print(f"queued again: {', '.join(map(str, done)) or 'nothing'}")
    return 0
