"""Least privilege on the real PostgreSQL: the owner migrates, the services' role only works.

As the application role, PostgreSQL itself refuses UPDATE, DELETE, TRUNCATE and ALTER TABLE ...
DISABLE TRIGGER on audit_events (and any DDL), while the services' ordinary work succeeds:
recording instances, a triage's results, tokens and web sessions, audit events, verification.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from cxr_triage.settings import Settings
from governance import audit
from governance.audit.verify import verify_chain
from governance.db import Store, create_store_engine
from governance.events import emit_study_triaged
from governance.models import Study, StudyStatus
from governance.tokens import create_token, revoke_token
from migrations import app_role_of, upgrade
from tests.conftest import PG_ADMIN_URL, _pg_conninfo
from tests.web.conftest import bearer, populate
from web.app import create_app


@dataclass
class Roles:
    owner_url: str
    app_url: str
    app_role: str


def _url_as(user: str, schema: str) -> str:
    url = make_url(PG_ADMIN_URL).set(
        drivername="postgresql+psycopg",
        username=user,
        password=None,
        query={"options": f"-csearch_path={schema}"},
    )
    return url.render_as_string(hide_password=False)


@pytest.fixture
def roles() -> Iterator[Roles]:
    suffix = uuid.uuid4().hex[:8]
    owner, app, schema = f"cxr_owner_{suffix}", f"cxr_app_{suffix}", f"cxr_lp_{suffix}"
    with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {owner} LOGIN NOSUPERUSER")
        conn.execute(f"CREATE ROLE {app} LOGIN NOSUPERUSER")
        conn.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {owner}")
    owner_url, app_url = _url_as(owner, schema), _url_as(app, schema)
    assert app_role_of(app_url, owner_url) == app
    upgrade(owner_url, app_role=app)
    yield Roles(owner_url, app_url, app)
    with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.execute(f"DROP OWNED BY {app}")
        conn.execute(f"DROP ROLE {app}")
        conn.execute(f"DROP ROLE {owner}")


def _refused(url: str, statement: str) -> str:
    """Run ``statement`` as the URL's role; the SQLSTATE PostgreSQL refused it with."""
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text(statement))
            conn.commit()
    except Exception as exc:  # noqa: BLE001 - the driver error is what we look at
        return str(getattr(getattr(exc, "orig", None), "sqlstate", "") or type(exc).__name__)
    finally:
        engine.dispose()
    return "allowed"


def test_the_app_role_cannot_alter_the_audit_trail(roles: Roles, tmp_path: Path) -> None:
    store = Store(create_store_engine(roles.app_url), audit_key=b"k" * 32)
    store.run(lambda s: audit.record(s, actor="pytest", action=audit.Action.QUERY))
    with store.read() as session:
        assert verify_chain(session).events == 1
    store.dispose()
    for statement in (
        "UPDATE audit_events SET actor = 'x'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "ALTER TABLE audit_events DISABLE TRIGGER ALL",
        "ALTER TABLE audit_events DISABLE TRIGGER USER",
        "DROP TABLE audit_events",
        "CREATE TABLE sneaky (id int)",
        "UPDATE alembic_version SET version_num = '0001'",
    ):
        # 42501 insufficient_privilege, raised by PostgreSQL before any trigger runs.
        assert _refused(roles.app_url, statement) == "42501", statement
    # The owner can (it migrates); the application is never the owner.
    assert _refused(roles.owner_url, "ALTER TABLE audit_events ENABLE TRIGGER ALL") == "allowed"


def test_the_services_work_as_the_app_role(
    roles: Roles, tmp_path: Path, make_settings: object
) -> None:
    store = Store(create_store_engine(roles.app_url), audit_key=b"k" * 32)
    store.check_schema()
    scenario = populate(store, tmp_path / "models", tmp_path / "spool")  # instances, triage

    def triaged(session: object) -> None:
        study = session.scalars(  # type: ignore[attr-defined]
            select(Study).where(Study.study_instance_uid == scenario.uids["B"])
        ).one()
        study.status = StudyStatus.TRIAGED
        emit_study_triaged(
            session,  # type: ignore[arg-type]
            study_id=study.id,
            study_instance_uid=study.study_instance_uid,
            status=study.status,
            model_version_id=None,
            model_version=None,
            study_inference_id=None,
            probability=0.9,
            tau=0.35,
            policy_version=2,
            flagged=True,
            previously_flagged=True,
        )

    store.run(triaged)
    _, token = store.run(
        lambda s: create_token(s, name="reader", role="radiologist", created_by="cli:pytest")
    )
    settings: Settings = make_settings(database_url=roles.app_url)  # type: ignore[operator]
    with TestClient(create_app(settings, store)) as client:
        assert client.get("/api/worklist", headers=bearer(token)).status_code == 200
        client.get("/login")
        logged_in = client.post(
            "/login",
            data={"token": token, "csrf": client.cookies["cxr_csrf"]},
            follow_redirects=False,
        )
        assert logged_in.status_code == 303
        assert client.get("/api/me").status_code == 200
        store.run(lambda s: revoke_token(s, "reader", actor="cli:pytest"))
        assert client.get("/api/me").status_code == 401
    with store.read() as session:
        result = verify_chain(session)
    assert result.ok and result.keyed_events == result.events > 5
    store.dispose()


def test_db_commands_create_the_role_and_migrate_as_the_owner(tmp_path: Path) -> None:
    from tests.cxr_triage.test_cli import run_cli

    suffix = uuid.uuid4().hex[:8]
    owner, app, schema = f"cxr_owner_{suffix}", f"cxr_app_{suffix}", f"cxr_lp_{suffix}"
    with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {owner} LOGIN NOSUPERUSER CREATEROLE")
        conn.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {owner}")
    env = {
        "CXR_DATA_DIR": str(tmp_path),
        "CXR_DATABASE_URL": _url_as(app, schema),
        "CXR_MIGRATION_DATABASE_URL": _url_as(owner, schema),
    }
    try:
        shown = run_cli("db", "create-roles", "--print-sql", env=env)
        assert shown.returncode == 0 and f"CREATE ROLE {app} LOGIN" in shown.stdout
        upgraded = run_cli("db", "upgrade", env=env)
        assert upgraded.returncode == 2  # the role does not exist yet: one line
        assert "Traceback" not in upgraded.stderr
        assert upgraded.stderr.splitlines()[-1].endswith(f'role "{app}" does not exist')
        created = run_cli("db", "create-roles", env=env)
        assert created.returncode == 0, created.stderr
        upgraded = run_cli("db", "upgrade", env=env)
        assert upgraded.returncode == 0, upgraded.stderr
        assert f"granted the application role {app}" in upgraded.stdout
        assert _refused(env["CXR_DATABASE_URL"], "DELETE FROM audit_events") == "42501"
        store = Store(create_store_engine(env["CXR_DATABASE_URL"]))
        store.run(lambda s: audit.record(s, actor="pytest", action=audit.Action.QUERY))
        store.dispose()
    finally:
        with psycopg.connect(_pg_conninfo(PG_ADMIN_URL), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"DROP OWNED BY {app}" if _role_exists(conn, app) else "SELECT 1")
            conn.execute(f"DROP ROLE IF EXISTS {app}")
            conn.execute(f"DROP ROLE {owner}")


def _role_exists(conn: psycopg.Connection[tuple[object, ...]], role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None
