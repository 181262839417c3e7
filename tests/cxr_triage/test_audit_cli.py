"""``cxr-triage audit query|verify`` on SQLite and PostgreSQL, settings from the environment."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cxr_triage.cli import main
from cxr_triage.settings import get_settings
from governance import audit
from governance.audit import Action
from governance.db import Store
from governance.models import AuditEvent
from governance.policies import set_policy
from governance.registry import activate_model, register_model
from tests.governance import tampering

STUDY = "1.2.826.0.1.3680043.10.999.65"
OTHER = "1.2.826.0.1.3680043.10.999.66"


@pytest.fixture
def env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("CXR_DATABASE_URL", database_url)
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CXR_SYSLOG_URL", raising=False)
    get_settings.cache_clear()
    store = Store.from_url(database_url)
    yield store
    store.dispose()
    get_settings.cache_clear()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["audit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def fill(store: Store, count: int) -> None:
    def work(session: Any) -> None:
        for n in range(count):
            audit.record(
                session,
                actor=f"MODALITY{n % 2}",
                actor_address="10.0.0.7",
                action=Action.INSTANCES_RECEIVED,
                object_type="study",
                object_uid=STUDY if n % 2 else OTHER,
                detail={"instances": n + 1},
            )

    store.run(work)


def events(store: Store, action: str) -> list[dict[str, Any]]:
    with store.read() as session:
        found = session.scalars(select(AuditEvent).where(AuditEvent.action == action))
        return [audit.event_fields(event) for event in found]


def test_help_explains_the_anchor(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["audit", "verify", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--expect-head" in text and "deleted from the END" in text
    with pytest.raises(SystemExit):
        main(["audit", "query", "--help"])
    assert "--study" in capsys.readouterr().out


def test_verify_intact_then_names_the_edited_row(
    env: Store, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(env, 8)
    code, out, _ = run(capsys, "verify")
    assert code == 0
    with env.read() as session:
        head = session.scalar(select(AuditEvent.row_hash).where(AuditEvent.id == 8))
    assert f"audit trail intact: 8 events, head hash {head}" in out
    assert f"anchor 8:{head}" in out
    used = events(env, Action.AUDIT_LOG_USED)
    assert len(used) == 1 and used[0]["event_code"] == "110101"
    assert used[0]["detail"]["operation"] == "verify" and used[0]["detail"]["intact"] is True

    tampering.edit(database_url, 4, actor="mallory")
    code, out, _ = run(capsys, "verify")
    assert code == 1
    assert "first bad event 4" in out and "edited" in out
    tamper = events(env, Action.AUDIT_TAMPER_DETECTED)
    assert len(tamper) == 1 and tamper[0]["event_code"] == "110113"
    assert tamper[0]["detail"]["first_bad_id"] == 4 and tamper[0]["outcome"] == "failure"


@pytest.mark.parametrize(
    ("tamper", "first_bad", "kind"),
    [
        (lambda url: tampering.delete(url, 3), 3, "deleted"),
        (lambda url: tampering.swap(url, 2, 5), 2, "reordered"),
    ],
    ids=["delete", "swap"],
)
def test_verify_names_deleted_and_reordered_rows(
    env: Store,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    tamper: Any,
    first_bad: int,
    kind: str,
) -> None:
    fill(env, 8)
    tamper(database_url)
    code, out, _ = run(capsys, "verify", "--format", "json")
    assert code == 1
    result = json.loads(out)
    assert result["intact"] is False
    assert (result["first_bad_id"], result["first_problem"]) == (first_bad, kind)


def test_expect_head_catches_deleted_newest_rows(
    env: Store, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(env, 5)
    _, out, _ = run(capsys, "verify")
    anchor = out.split("anchor ", 1)[1].split()[0]
    assert anchor.startswith("5:")
    assert run(capsys, "verify", "--expect-head", anchor)[0] == 0  # still there, trail grew
    with env.read() as session:
        last = session.scalar(select(AuditEvent.id).order_by(AuditEvent.id.desc()).limit(1))
    tampering.delete(database_url, *range(5, (last or 5) + 1))
    # The chain alone cannot tell; this verification is recorded as a new event 5.
    assert run(capsys, "verify")[0] == 0
    code, out, _ = run(capsys, "verify", "--expect-head", anchor, "--format", "json")
    assert code == 1
    result = json.loads(out)
    assert (result["first_bad_id"], result["first_problem"]) == (5, "anchor")
    assert "not the anchored event" in result["problems"][0]["message"]


def test_query_formats_and_filters(env: Store, capsys: pytest.CaptureFixture[str]) -> None:
    fill(env, 6)
    code, out, _ = run(
        capsys,
        "query",
        "--study",
        STUDY,
        "--actor",
        "MODALITY*",
        "--since",
        "1h",
        "--format",
        "json",
    )
    assert code == 0
    rows = json.loads(out)
    assert [r["id"] for r in rows] == [2, 4, 6]
    assert all(r["object_uid"] == STUDY and r["event_code"] == "110104" for r in rows)

    code, out, _ = run(
        capsys, "query", "--action", "instances_received", "--limit", "2", "--format", "csv"
    )
    table = list(csv.DictReader(io.StringIO(out)))
    assert [r["id"] for r in table] == ["5", "6"]  # the newest two, oldest first
    assert json.loads(table[0]["detail"]) == {"instances": 5}

    code, out, _ = run(capsys, "query", "--outcome", "refused")
    assert code == 0 and "no audit events match" in out
    code, out, _ = run(capsys, "query", "--until", "2000-01-01", "--limit", "0", "--format", "json")
    assert json.loads(out) == []

    code, out, _ = run(capsys, "query", "--code", "110104")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["id", "time", "(UTC)"] and len(lines) == 7
    # Every query above was itself recorded, with its filters.
    used = [e for e in events(env, Action.AUDIT_LOG_USED) if e["detail"]["operation"] == "query"]
    assert len(used) == 5
    assert (
        used[0]["detail"]["filters"]["object_uid"] == STUDY and used[0]["detail"]["returned"] == 3
    )


def test_query_all_streams_csv(env: Store, capsys: pytest.CaptureFixture[str]) -> None:
    fill(env, 30)
    code, out, _ = run(capsys, "query", "--limit", "0", "--format", "csv")
    assert code == 0
    assert [int(r["id"]) for r in csv.DictReader(io.StringIO(out))] == list(range(1, 31))


def test_query_study_answers_who_decided(
    env: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "m.pt"
    weights.write_bytes(b"model bytes")

    def setup(session: Any) -> str:
        model = register_model(session, version="cxr-2026.11", path=weights, input_size=64)
        set_policy(
            session,
            model,
            operating_point="triage",
            tau=0.27,
            rationale="sensitivity 0.95 on the site validation set",
            approved_by="Dr. Chair, imaging committee",
            actor="cli:qa",
        )
        activate_model(session, "cxr-2026.11", actor="cli:admin")
        audit.record(
            session,
            actor="worker",
            action=Action.STUDY_TRIAGED,
            object_type="study",
            object_uid=STUDY,
            detail={
                "model_version": "cxr-2026.11",
                "model_sha256": model.sha256,
                "policy_version": 1,
                "tau": 0.27,
                "probability": 0.91,
                "flagged": True,
            },
        )
        return model.sha256

    sha = env.run(setup)
    code, out, _ = run(capsys, "query", "--study", STUDY)
    assert code == 0
    assert f"model sha256    {sha} (matches the registry)" in out
    assert "activated by    cli:admin" in out
    assert "policy          v1, tau 0.27 (triage)" in out
    assert "approved by     Dr. Chair, imaging committee (set by cli:qa" in out
    assert "rationale       sensitivity 0.95 on the site validation set" in out
    assert "flagged" in out

    code, out, _ = run(capsys, "query", "--study", STUDY, "--format", "json")
    (triaged,) = [r for r in json.loads(out) if r["action"] == "study_triaged"]
    assert triaged["decided_by"]["policy"]["approved_by"] == "Dr. Chair, imaging committee"
    assert triaged["decided_by"]["model_sha256"] == sha and triaged["decided_by"]["tau"] == 0.27


def test_bad_arguments_and_store(
    env: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["audit", "query", "--since", "yesterday"])
    assert exit_.value.code == 2 and "yesterday" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["audit", "verify", "--expect-head", "nothex"])
    assert "expect_head" in capsys.readouterr().err
    monkeypatch.setenv("CXR_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    get_settings.cache_clear()
    code, _, err = run(capsys, "verify")
    assert code == 2 and "cxr-triage db upgrade" in err


def test_audit_command_in_a_real_process(env: Store, database_url: str) -> None:
    fill(env, 3)
    environ = {**os.environ, "CXR_DATABASE_URL": database_url, "CXR_SYSLOG_URL": ""}
    done = subprocess.run(
        [sys.executable, "-m", "cxr_triage.cli", "audit", "verify"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("audit trail intact: 3 events, head hash ")


def test_verify_anchors_catches_a_rewrite_by_someone_without_the_key(
    env: Store,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CXR_AUDIT_ANCHOR_INTERVAL_S", "0")
    monkeypatch.setenv("CXR_AUDIT_KEY", "site-audit-key-0123456789")
    get_settings.cache_clear()
    keyed = Store.from_settings(get_settings())  # what every cxr-triage process opens
    fill(keyed, 4)
    keyed.dispose()
    code, out, _ = run(capsys, "verify", "--anchors")
    assert code == 0 and "anchor(s) found" in out
    # Rewritten from the first row as if never keyed: the chain alone checks out again.
    tampering.rewrite_from(database_url, 1, unkeyed=True, actor="mallory")
    code, out, _ = run(capsys, "verify", "--anchors", "--format", "json")
    assert code == 1
    result = json.loads(out)
    # fill() wrote its four events in one transaction: one anchor, at event 4.
    assert (result["first_bad_id"], result["first_problem"]) == (4, "anchor")
    bad = tmp_path / "bad.log"
    bad.write_text("garbage\n")
    code, _, err = run(capsys, "verify", "--anchors", str(bad))
    assert code == 2 and err.count("\n") == 1 and "bad.log:1 is not an anchor" in err
