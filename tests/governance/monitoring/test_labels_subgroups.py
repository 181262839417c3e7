"""Labels import (all or nothing), subgroup performance and concordance from a real store, and
the `monitor` / `labels` commands on it (SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from governance.db import Store
from governance.models import AuditEvent, Study, StudyLabel, utcnow
from governance.monitoring.labels import concordance, import_labels
from governance.monitoring.subgroups import subgroup_report
from tests.cxr_triage.test_cli import run_cli
from tests.governance.monitoring.store_data import add_model, insert_studies
from tests.governance.monitoring.synth import Population, draw


def _store_with_studies(store: Store, tmp_path: Path, n: int = 400):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(8)
    model_file = tmp_path / "m.pt"
    model_file.write_bytes(b"model")
    model = store.run(lambda s: add_model(s, str(model_file), validation=draw(rng, 1000)))
    studies = draw(rng, n)
    start = utcnow() + dt.timedelta(minutes=1)
    store.run(
        lambda s: insert_studies(s, model, studies, start=start, step=dt.timedelta(minutes=5))
    )
    with store.read() as session:
        uids = session.scalars(select(Study.study_instance_uid).order_by(Study.id)).all()
    return model, studies, list(uids)


def test_labels_import_is_all_or_nothing_and_bad_rows_are_named(
    store: Store, tmp_path: Path
) -> None:
    _, _, uids = _store_with_studies(store, tmp_path, n=20)
    good = f"study_instance_uid,label,site\n{uids[0]},1,north\n{uids[1]},negative,south\n"
    bad = good + f"{uids[2]},maybe,north\n1.2.3.999,0,\nnot-a-uid,1,\n"
    report = store.run(lambda s: import_labels(s, bad.encode(), actor="pytest"))
    assert report.imported == 0
    assert report.errors[0].startswith("line 4: label must be")
    assert report.errors[1].startswith("line 6: not a Study Instance UID")
    assert "no study 1.2.3.999" in report.errors[2]
    # The caller rolls back on errors (the CLI does); here nothing was added before the check.
    with store.read() as session:
        assert session.scalar(select(func.count()).select_from(StudyLabel)) == 0
    report = store.run(lambda s: import_labels(s, good.encode(), actor="pytest"))
    assert report.imported == 2 and not report.errors
    with store.read() as session:
        labels = {lab.study_id: lab for lab in session.scalars(select(StudyLabel))}
        assert sorted(lab.label for lab in labels.values()) == [False, True]
        assert {lab.subgroups["site"] for lab in labels.values()} == {"north", "south"}
        assert (
            session.scalar(select(func.count()).where(AuditEvent.action == "labels_imported")) == 1
        )


def test_subgroups_flag_only_the_weak_manufacturer_and_concordance_per_day(
    store: Store, tmp_path: Path
) -> None:
    rng = np.random.default_rng(21)
    model_file = tmp_path / "m.pt"
    model_file.write_bytes(b"model")
    model = store.run(lambda s: add_model(s, str(model_file), validation=draw(rng, 1000)))
    makers = {"Acme": 0.7, "Bravo": 0.12, "Carm": 0.18}
    studies = draw(rng, 1500, Population(manufacturers=makers))
    labels = rng.random(1500) < 0.35
    studies.labels = labels
    studies.scores = np.where(labels, rng.beta(8, 1.5, 1500), rng.beta(2, 6, 1500))
    weak = (studies.columns["manufacturer"] == "Bravo") & labels & (rng.random(1500) < 0.5)
    studies.scores[weak] = rng.beta(2, 6, int(weak.sum()))
    studies.columns["calling_ae"][:10] = "RARE"  # a site too small for figures
    start = utcnow() + dt.timedelta(minutes=1)
    store.run(
        lambda s: insert_studies(s, model, studies, start=start, step=dt.timedelta(minutes=3))
    )
    with store.read() as session:
        report = subgroup_report(session, min_count=30, bootstrap=100)
        days = concordance(session)
    assert report["targets"] == {"sensitivity": 0.9} and report["labelled"] == 1500
    flagged = [(r["attribute"], r["value"]) for r in report["subgroups"] if r["flagged"]]
    assert flagged == [("manufacturer", "Bravo")]
    rare = next(r for r in report["subgroups"] if r["value"] == "RARE")
    assert rare["status"] == "too few" and rare["sensitivity"] is None
    assert sum(d["n"] for d in days) == 1500 and len(days) >= 3
    flags = studies.scores >= 0.5
    assert sum(d["agree"] for d in days) == int((flags == labels).sum())


def test_monitor_and_labels_commands(store: Store, tmp_path: Path, database_url: str) -> None:
    _, _, uids = _store_with_studies(store, tmp_path, n=200)
    env = {"CXR_DATABASE_URL": database_url, "CXR_DATA_DIR": str(tmp_path / "data")}
    good = tmp_path / "labels.csv"
    with good.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["study_uid", "label"])
        writer.writerows([uid, i % 2] for i, uid in enumerate(uids[:50]))
    done = run_cli("labels", "import", str(good), env=env)
    assert done.returncode == 0 and "imported 50 labels" in done.stdout, done.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text(f"study_uid,label\n{uids[0]},1\n{uids[1]},what\n")
    refused = run_cli("labels", "import", str(bad), env=env)
    assert refused.returncode == 2 and "line 3: label must be" in refused.stderr
    assert "nothing imported" in refused.stderr and "Traceback" not in refused.stderr
    missing = run_cli("labels", "import", str(tmp_path / "nope.csv"), env=env)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1

    drift = run_cli("monitor", "drift", "--format", "json", env=env)
    assert drift.returncode == 0, drift.stderr
    document = json.loads(drift.stdout)
    assert document["run"]["status"] == "no baseline yet"  # 200 < the 500-study baseline
    table = run_cli("monitor", "drift", "--history", "5", env=env)
    assert table.returncode == 0 and "no baseline yet" in table.stdout
    groups = run_cli("monitor", "subgroups", "--format", "csv", env=env)
    assert groups.returncode == 0, groups.stderr
    assert groups.stdout.splitlines()[0].startswith("attribute,value,n,positives,status")
    assert any(line.startswith("overall,all,200") for line in groups.stdout.splitlines())

    jobs = run_cli("recalibrate", "list", "--format", "json", env=env)
    assert jobs.returncode == 0, jobs.stderr
    listed = json.loads(jobs.stdout)
    assert [(j["trigger"], j["state"]) for j in listed] == [("activation", "waiting-for-labels")]
    ran = run_cli("recalibrate", "run", env=env)
    # Every synthetic study has a final read: 200 labelled studies, as many as it needs.
    assert ran.returncode == 0 and "candidate" in ran.stdout, ran.stderr
    job_id = str(listed[0]["id"] + 1)
    shown = run_cli("recalibrate", "show", job_id, env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["result"]["check_n"] == 100
    refused = run_cli("recalibrate", "approve", str(listed[0]["id"]), "--reason", "x", env=env)
    assert refused.returncode == 2 and "not a candidate" in refused.stderr
    assert refused.stderr.count("\n") == 1
    approved = run_cli("recalibrate", "approve", job_id, "--reason", "SOP 4.2", env=env)
    assert approved.returncode == 0 and "approved" in approved.stdout
    shadow = run_cli(
        "policy", "mode", "shadow", "--model", "mon-v1",
        "--approved-by", "qa", "--reason", "go-live", env=env,
    )  # fmt: skip
    assert shadow.returncode == 0 and "policy v3 for mon-v1: shadow" in shadow.stdout, shadow.stderr
