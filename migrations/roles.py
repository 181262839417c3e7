"""Least privilege on PostgreSQL: the owner role migrates, the application role only works.

Migrations (``cxr-triage db upgrade``) run as the schema's owner (``CXR_MIGRATION_DATABASE_URL``);
the gateway, workers and web connect as an application role (``CXR_DATABASE_URL``) that owns
nothing, so it can neither ``ALTER`` a table nor disable a trigger. On ``audit_events`` it may
only INSERT and SELECT (no UPDATE, DELETE or TRUNCATE); on the other tables it has the DML the
services need; ``alembic_version`` it may only read.

:func:`grant_app_role` is idempotent: revision 0004 applies it when an application role is
configured, and ``db upgrade`` applies it again after every upgrade, so tables that later
revisions add are granted too.
"""

from __future__ import annotations

import re

from sqlalchemy import Connection, text

#: Tables the application role may only read and append to.
APPEND_ONLY = ("audit_events",)
#: Tables it may only read.
READ_ONLY = ("alembic_version",)

_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_role_name(name: str) -> str:
    """A role name safe to put in SQL unquoted (lower-case letters, digits, underscores)."""
    if not _ROLE.match(name):
        raise ValueError(
            f"role name must be 1-63 lower-case letters, digits or underscores, got {name!r}"
        )
    return name


def grant_app_role(conn: Connection, role: str) -> list[str]:
    """Give ``role`` exactly the privileges the services need on the current schema.

    Returns the statements run. Does nothing on SQLite (one file, no roles).
    """
    if conn.dialect.name != "postgresql":
        return []
    role = check_role_name(role)
    schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    owner = conn.execute(text("SELECT current_user")).scalar_one()
    if role == owner:
        raise ValueError(
            f"the application role {role!r} is the schema owner: connect the services as "
            "another role (CXR_DATABASE_URL) and migrate as the owner (CXR_MIGRATION_DATABASE_URL)"
        )
    tables = list(
        conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = :schema ORDER BY 1"),
            {"schema": schema},
        ).scalars()
    )
    q = f'"{schema}"'
    statements = [f"GRANT USAGE ON SCHEMA {q} TO {role}"]
    for table in tables:
        name = f'{q}."{table}"'
        statements.append(f"REVOKE ALL ON {name} FROM {role}")
        if table in APPEND_ONLY:
            statements.append(f"GRANT SELECT, INSERT ON {name} TO {role}")
        elif table in READ_ONLY:
            statements.append(f"GRANT SELECT ON {name} TO {role}")
        else:
            statements.append(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO {role}")
    statements.append(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {q} TO {role}")
    for statement in statements:
        conn.execute(text(statement))
    return statements


def create_role_sql(role: str, password: str | None) -> str:
    """The SQL that creates the application login role (``db create-roles``; docs/deploy.md)."""
    role = check_role_name(role)
    login = "LOGIN"
    if password:
        login += " PASSWORD '" + password.replace("'", "''") + "'"
    return (
        "DO $$ BEGIN "
        f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
        f"CREATE ROLE {role} {login} NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT; "
        "END IF; END $$"
    )
