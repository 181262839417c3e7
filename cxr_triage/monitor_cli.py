"""``cxr-triage monitor``: label-free drift, subgroup performance and concordance.

Every report prints as a table, CSV or JSON (``--format``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

from cxr_triage.settings import Settings
from cxr_triage.store_command import cli_actor, parse_and_open
from governance.db import Store
from governance.errors import NoActiveModel
from governance.models import DriftRun
from governance.monitoring.drift import DriftConfig
from governance.monitoring.runs import WindowSettings, latest_runs, pin_baseline, run_drift
from governance.monitoring.subgroups import subgroup_report
from governance.registry import active_model, get_model

FORMATS = ("table", "csv", "json")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage monitor",
        description="Monitoring of the model in production: label-free drift against the "
        "reference, and performance per subgroup against final reads and imported labels.",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    drift = sub.add_parser(
        "drift",
        help="run drift now (or list stored runs)",
        description="Run the drift tests on the latest window against the model version's "
        "reference and store the run; --history lists stored runs instead.",
    )
    drift.add_argument("--model", metavar="VERSION", help="model version (default: active)")
    drift.add_argument("--history", type=int, metavar="N", help="list the last N stored runs")
    drift.add_argument("--format", choices=FORMATS, default="table")
    sg = sub.add_parser(
        "subgroups",
        help="performance overall and per subgroup",
        description="Sensitivity, specificity, PPV, NPV (Wilson 95%% intervals) and AUC "
        "(bootstrap interval) overall and per sex, age band, view position, manufacturer and "
        "site; flagged where the interval lies below the policy's target.",
    )
    sg.add_argument("--model", metavar="VERSION", help="model version (default: active)")
    sg.add_argument("--format", choices=FORMATS, default="table")
    pin = sub.add_parser(
        "pin-baseline",
        help="pin a production period as the drift baseline",
        description="Use the studies triaged between --from and --to (ISO 8601, UTC) as the "
        "model version's drift baseline instead of its first studies (audited).",
    )
    pin.add_argument("--model", metavar="VERSION", required=True)
    pin.add_argument("--from", dest="start", required=True, type=_when, metavar="TIME")
    pin.add_argument("--to", dest="end", required=True, type=_when, metavar="TIME")
    pin.add_argument("--reason", required=True)
    return parser


def _when(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def drift_config(settings: Settings) -> tuple[WindowSettings, DriftConfig]:
    return (
        WindowSettings(
            days=settings.drift_window_days,
            studies=settings.drift_window_studies,
            baseline_studies=settings.drift_baseline_studies,
        ),
        DriftConfig(alpha=settings.drift_alpha, min_studies=settings.drift_min_studies),
    )


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str, document: Any) -> None:
    """Print rows as a table or CSV, or ``document`` as JSON."""
    if fmt == "json":
        json.dump(document, sys.stdout, indent=2, default=str)
        print()
        return
    if fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        return
    if not rows:
        print("(nothing)")
        return
    text = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in text)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in text:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _run_row(run: DriftRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "started_at": f"{run.started_at:%Y-%m-%d %H:%M}Z",
        "status": run.status,
        "studies": run.n_studies,
        "psi": run.psi,
        "flag_rate": run.flag_rate,
        "expected": run.expected_flag_rate,
        "alert": ",".join(a["feature"] for a in run.results.get("alerts", [])) or "-",
    }


TEST_COLUMNS = (
    "feature",
    "test",
    "effect_name",
    "effect",
    "floor",
    "p_value",
    "p_adjusted",
    "alert",
)


def _drift(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    if args.history:
        with store.read() as session:
            model = get_model(session, args.model) if args.model else active_model(session)
            if model is None:
                raise NoActiveModel("no active model version (cxr-triage model activate)")
            runs = latest_runs(session, model.id, args.history)
            rows = [_run_row(r) for r in runs]
            document = [{**_run_row(r), "inputs": r.inputs, "results": r.results} for r in runs]
        emit(rows, list(rows[0]) if rows else ["id"], args.format, document)
        return 0
    window, config = drift_config(settings)
    run = run_drift(store, model_version=args.model, window=window, config=config)
    assert run is not None  # a manual run has a fresh key
    tests = run.results.get("tests", [])
    if args.format == "table":
        print(
            f"drift run {run.id} of {run.inputs['model_version']}: {run.status}, "
            f"{run.n_studies} studies; baseline {run.inputs.get('baseline')}"
        )
        if run.flag_rate is not None:
            cusum = run.results.get("cusum", {})
            print(
                f"flag rate {run.flag_rate:.3f} (expected {run.expected_flag_rate:.3f}); CUSUM "
                f"h={cusum.get('h', 0):.2f}, in-control ARL {cusum.get('arl0', 0):.0f} studies, "
                f"expected detection delay {cusum.get('arl1', 0):.0f} studies"
            )
    emit(tests, TEST_COLUMNS, args.format, {"run": _run_row(run), **run.results})
    return 0


SUBGROUP_COLUMNS = (
    "attribute", "value", "n", "positives", "status", "sensitivity", "specificity", "ppv",
    "npv", "auc", "flagged",
)  # fmt: skip


def _subgroups(args: argparse.Namespace, store: Store, settings: Settings) -> int:
    with store.read() as session:
        report = subgroup_report(
            session, model_version=args.model, min_count=settings.subgroup_min_studies
        )
    rows = [_flat(r) for r in report["subgroups"]]
    if args.format == "table":
        print(
            f"model {report['model_version']}, {report['labelled']} labelled studies, "
            f"targets {report['targets'] or 'none in the policy'}"
        )
    emit(rows, SUBGROUP_COLUMNS, args.format, report)
    return 0


def _interval(value: dict[str, Any] | None) -> str | None:
    if not value or value.get("value") is None:
        return None
    return f"{value['value']:.3f} ({value['low']:.3f}-{value['high']:.3f})"


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    auc = row.get("auc")
    return {
        "attribute": row["attribute"],
        "value": row["value"],
        "n": row["n"],
        "positives": row["positives"],
        "status": row["status"],
        "sensitivity": _interval(row.get("sensitivity")),
        "specificity": _interval(row.get("specificity")),
        "ppv": _interval(row.get("ppv")),
        "npv": _interval(row.get("npv")),
        "auc": f"{auc[0]:.3f} ({auc[1]:.3f}-{auc[2]:.3f})" if auc else None,
        "flagged": "; ".join(row["reasons"]) if row["flagged"] else "",
    }


def main(argv: list[str] | None = None) -> int:
    args, settings, store = parse_and_open(get_args_parser(), argv)
    if args.action == "drift":
        return _drift(args, store, settings)
    if args.action == "pin-baseline":
        actor = cli_actor()
        if not args.end > args.start or not args.reason.strip():
            print("cxr-triage monitor: --to must be after --from, with a reason", file=sys.stderr)
            return 2
        store.run(
            lambda s: pin_baseline(
                s,
                get_model(s, args.model),
                starts_at=args.start,
                ends_at=args.end,
                pinned_by=actor,
                reason=args.reason,
            )
        )
        print(f"drift baseline of {args.model}: {args.start.isoformat()} to {args.end.isoformat()}")
        return 0
    return _subgroups(args, store, settings)
