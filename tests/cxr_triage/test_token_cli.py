"""`cxr-triage token create|list|revoke` as a person runs it, against a real store."""

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
from governance.tokens import authenticate


def run(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(CXR_DATABASE_URL=url, CXR_DATA_DIR=str(tmp_path / "data"))
    return subprocess.run(
        [sys.executable, "-m", "cxr_triage.cli", "token", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_create_prints_the_token_once_list_never_shows_it_revoke_refuses_it(
    tmp_path: Path, make_database_url: Callable[[str], str]
) -> None:
    url = make_database_url("sqlite")
    created = run(url, tmp_path, "create", "--role", "radiologist", "--name", "dr a")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("cxr_") and "\n" not in token  # stdout is the token alone
    assert "shown only now" in created.stderr and token not in created.stderr
    store = Store.from_url(url)
    try:
        check = authenticate(store, token)
        assert check.identity is not None and check.identity.role == "radiologist"

        listed = run(url, tmp_path, "list")
        assert listed.returncode == 0
        assert "dr a" in listed.stdout and token[:12] in listed.stdout
        assert token not in listed.stdout and "active" in listed.stdout

        again = run(url, tmp_path, "create", "--role", "admin", "--name", "dr a")
        assert again.returncode == 2
        assert again.stderr.strip() == (
            "cxr-triage token: a token named 'dr a' exists already; choose another name"
        )
        bad = run(url, tmp_path, "create", "--role", "superuser", "--name", "x")
        assert bad.returncode == 2 and "invalid choice" in bad.stderr

        revoked = run(url, tmp_path, "revoke", "dr a")
        assert revoked.returncode == 0 and "revoked token 'dr a'" in revoked.stdout
        assert authenticate(store, token).reason == "revoked token"
        assert "revoked" in run(url, tmp_path, "list").stdout
        missing = run(url, tmp_path, "revoke", "nobody")
        assert missing.returncode == 2 and "no token named 'nobody'" in missing.stderr

        with store.read() as session:
            events = [
                (e.action, e.actor)
                for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))
            ]
        me = f"cli:{getpass.getuser()}"
        assert ("token_created", me) in events and ("token_revoked", me) in events
    finally:
        store.dispose()


def test_an_unmigrated_store_is_one_line(tmp_path: Path) -> None:
    result = run(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path, "list")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cxr-triage token: the store is at schema")
    assert lines[0].endswith("run `cxr-triage db upgrade`")
