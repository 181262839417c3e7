"""``cxr-triage recalibrate``: recalibration jobs of a model version, and a person's decision."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sqlalchemy import select

from cxr_triage.monitor_cli import FORMATS, emit
from cxr_triage.store_command import cli_actor, parse_and_open
from governance.errors import NoActiveModel
from governance.models import ModelVersion, RecalibrationJob
from governance.recalibration import create_job, decide, run_job
from governance.registry import active_model, get_model

COLUMNS = ("id", "model", "state", "trigger", "labels", "tau", "temperature", "created", "note")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage recalibrate",
        description="Recalibration jobs: refit temperature (and prevalence) and tau on labelled "
        "production, split in time into fit and check halves. A candidate changes nothing until "
        "an admin approves it, which adds a policy version that new studies use.",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = sub.add_parser("run", help="start and run a job now", description="Start a job now.")
    run.add_argument("--model", metavar="VERSION", help="model version (default: active)")
    ls = sub.add_parser("list", help="list jobs", description="List recalibration jobs.")
    ls.add_argument("--format", choices=FORMATS, default="table")
    show = sub.add_parser("show", help="one job's figures", description="Show a job as JSON.")
    show.add_argument("job", type=int)
    for name in ("approve", "reject"):
        decision = sub.add_parser(
            name,
            help=f"{name} a candidate (audited)",
            description=f"{name.capitalize()} a candidate job, with the reason (audited).",
        )
        decision.add_argument("job", type=int)
        decision.add_argument("--reason", required=True)
    return parser


def _row(job: RecalibrationJob, version: str) -> dict[str, Any]:
    return {
        "id": job.id,
        "model": version,
        "state": job.state,
        "trigger": job.trigger,
        "labels": job.labels_used,
        "tau": job.candidate_tau,
        "temperature": job.candidate_temperature,
        "created": f"{job.created_at:%Y-%m-%d %H:%M}Z",
        "note": job.message or job.decision_reason or "",
    }


def main(argv: list[str] | None = None) -> int:
    args, settings, store = parse_and_open(get_args_parser(), argv)
    actor = cli_actor()
    if args.action == "run":

        def start(session):  # type: ignore[no-untyped-def]
            model = get_model(session, args.model) if args.model else active_model(session)
            if model is None:
                raise NoActiveModel("no active model version (cxr-triage model activate)")
            job = create_job(session, model, trigger=f"manual {actor}")
            assert job is not None  # no window key: never a duplicate
            return job.id

        job = run_job(store, store.run(start), min_labels=settings.recalibration_labels)
        print(f"recalibration job {job.id}: {job.state} {job.message or ''}".rstrip())
        if job.result:
            print(json.dumps(job.result, indent=2))
        return 0
    if args.action in ("approve", "reject"):
        approve = args.action == "approve"
        job = store.run(
            lambda s: decide(s, args.job, approve=approve, actor=actor, reason=args.reason)
        )
        print(f"recalibration job {job.id}: {job.state}")
        return 0
    with store.read() as session:
        versions = {i: v for i, v in session.execute(select(ModelVersion.id, ModelVersion.version))}
        if args.action == "show":
            found = session.get(RecalibrationJob, args.job)
            if found is None:
                print(f"cxr-triage recalibrate: no job {args.job}", file=sys.stderr)
                return 2
            shown = {**_row(found, versions[found.model_version_id]), "result": found.result}
            print(json.dumps(shown, indent=2))
            return 0
        jobs = session.scalars(select(RecalibrationJob).order_by(RecalibrationJob.id)).all()
        rows = [_row(j, versions[j.model_version_id]) for j in jobs]
    emit(rows, COLUMNS, args.format, rows)
    return 0
