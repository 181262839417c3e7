"""``cxr-triage labels import FILE``: reference labels for subgroup performance and recalibration.

CSV columns: ``study_instance_uid`` (or ``study_uid``), ``label`` (1/0, true/false,
positive/negative), and optional subgroup columns. Every bad row is reported by its line and
nothing is imported unless every row is good.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr_triage.settings import get_settings
from cxr_triage.store_command import cli_actor
from governance.db import Store
from governance.monitoring.labels import MAX_FILE_BYTES, ImportReport, import_labels

MAX_ERRORS_SHOWN = 50


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage labels",
        description="Reference labels of studies (e.g. from a later CT or a consensus read).",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = sub.add_parser(
        "import",
        help="import labels from a CSV file (all or nothing)",
        description="Import a CSV with study_instance_uid, label and optional subgroup "
        "columns. Bad rows are reported by line and nothing is imported.",
    )
    imp.add_argument("file", type=Path, metavar="FILE")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    file: Path = args.file
    if not file.is_file():
        print(f"cxr-triage labels: no such file: {file}", file=sys.stderr)
        return 2
    if file.stat().st_size > MAX_FILE_BYTES:
        print(f"cxr-triage labels: {file} is over {MAX_FILE_BYTES} bytes", file=sys.stderr)
        return 2
    settings = get_settings()
    store = Store.open(settings)
    data = file.read_bytes()
    actor = cli_actor()

    def work(session):  # type: ignore[no-untyped-def]
        report = import_labels(session, data, actor=actor)
        if report.errors:
            session.rollback()  # nothing half-imported
        return report

    report: ImportReport = store.run(work)
    if report.errors:
        for error in report.errors[:MAX_ERRORS_SHOWN]:
            print(f"{file}: {error}", file=sys.stderr)
        hidden = len(report.errors) - MAX_ERRORS_SHOWN
        if hidden > 0:
            print(f"{file}: ... and {hidden} more", file=sys.stderr)
        print(
            f"cxr-triage labels: nothing imported ({len(report.errors)} bad rows)", file=sys.stderr
        )
        return 2
    print(f"imported {report.imported} labels")
    return 0
