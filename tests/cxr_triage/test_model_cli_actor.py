"""`cxr-triage model activate|rollback` record who did it: --actor, else cli:<OS user>."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from governance.db import Store
from governance.models import AuditEvent
from governance.policies import set_policy
from governance.registry import active_model, register_model


def run(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(CXR_DATABASE_URL=url, CXR_DATA_DIR=str(tmp_path / "data"))
    return subprocess.run(
        [sys.executable, "-m", "cxr_triage.cli", "model", *args],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_activate_and_rollback_name_the_actor(
    tmp_path: Path, make_database_url: Callable[[str], str]
) -> None:
    url = make_database_url("sqlite")
    store = Store.from_url(url)

    def register(session):  # type: ignore[no-untyped-def]
        for version in ("v1", "v2", "v3"):
            path = tmp_path / f"{version}.pt"
            path.write_bytes(version.encode())
            model = register_model(session, version=version, path=path, input_size=224)
            if version != "v3":
                set_policy(session, model, operating_point="triage", tau=0.3,
                           rationale="test", approved_by="qa")  # fmt: skip

    try:
        store.run(register)
        assert run(url, tmp_path, "activate", "v1").returncode == 0
        done = run(url, tmp_path, "activate", "v2", "--actor", "Dr. Admin")
        assert done.returncode == 0 and done.stdout.strip() == "active: v2"
        refused = run(url, tmp_path, "activate", "v3")
        assert refused.returncode == 2 and "no threshold policy" in refused.stderr
        back = run(url, tmp_path, "rollback")
        assert back.returncode == 0 and back.stdout.strip() == "active: v1"
        with store.read() as session:
            assert getattr(active_model(session), "version", None) == "v1"
            events = [
                (e.action, e.object_uid, e.actor, e.detail.get("previous"))
                for e in session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.object_type == "model_version")
                    .where(AuditEvent.action != "model_registered")
                    .order_by(AuditEvent.id)
                )
            ]
        me = f"cli:{getpass.getuser()}"
        assert events == [
            ("model_activated", "v1", me, None),
            ("model_activated", "v2", "Dr. Admin", "v1"),
            ("model_rolled_back", "v1", me, "v2"),
        ]
    finally:
        store.dispose()
