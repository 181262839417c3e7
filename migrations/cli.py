"""``cxr-triage db``: bring the store's schema up to date, create the application role, or show
where it stands.

On PostgreSQL the schema belongs to an owner role, which migrates
(``CXR_MIGRATION_DATABASE_URL``); the services connect as an application role
(``CXR_DATABASE_URL``) that ``db upgrade`` grants only what they need (``migrations.roles``).
"""

from __future__ import annotations

import argparse
import os
import sys

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from cxr_triage.settings import get_settings
from governance.db import create_store_engine
from governance.errors import ConfigError
from migrations import app_role_of, current_revision, head_revision, upgrade
from migrations.roles import check_role_name, create_role_sql, grant_app_role


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage db",
        description="Manage the store's schema (Alembic migrations; the only way it changes). "
        "Migrations connect with CXR_MIGRATION_DATABASE_URL (the schema owner; default "
        "CXR_DATABASE_URL); the services with CXR_DATABASE_URL (default: a SQLite file in "
        "CXR_DATA_DIR).",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = sub.add_parser(
        "upgrade",
        help="upgrade the schema to the newest revision",
        description="Upgrade the store's schema to the newest revision, as the schema owner. "
        "When CXR_DATABASE_URL names another PostgreSQL user, that role is granted only the "
        "DML the services need (INSERT and SELECT on audit_events).",
    )
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    sub.add_parser(
        "current",
        help="print the store's revision and the newest one",
        description="Print the store's schema revision and the newest one.",
    )
    roles = sub.add_parser(
        "create-roles",
        help="create the PostgreSQL application role (as the owner) and grant it",
        description="Create the services' login role named by CXR_DATABASE_URL (its password "
        "from that URL, or --password-env) using CXR_MIGRATION_DATABASE_URL, which needs "
        "CREATEROLE, then grant it what the services need. --print-sql only prints the SQL.",
    )
    roles.add_argument(
        "--password-env",
        metavar="VAR",
        help="environment variable holding the role's password (default: the URL's password)",
    )
    roles.add_argument("--print-sql", action="store_true", help="print the SQL, run nothing")
    return parser


def _create_roles(args: argparse.Namespace) -> int:
    settings = get_settings()
    app_url = make_url(settings.database_url)
    if app_url.get_backend_name() != "postgresql":
        print(
            "db create-roles: CXR_DATABASE_URL is not PostgreSQL (SQLite has no roles)",
            file=sys.stderr,
        )
        return 2
    role = app_role_of(settings.database_url, settings.owner_database_url)
    if role is None:
        print(
            "db create-roles: set CXR_MIGRATION_DATABASE_URL to the schema owner's URL and "
            "CXR_DATABASE_URL to the application role's (another user)",
            file=sys.stderr,
        )
        return 2
    try:
        check_role_name(role)
    except ValueError as exc:
        print(f"db create-roles: {exc}", file=sys.stderr)
        return 2
    password = os.environ.get(args.password_env, "") if args.password_env else app_url.password
    sql = create_role_sql(role, str(password) if password else None)
    if args.print_sql:
        shown = create_role_sql(role, "PASSWORD" if password else None)
        print(f"{shown};\n-- then, as the owner: cxr-triage db upgrade (grants {role})")
        return 0
    engine = create_store_engine(settings.owner_database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql))
            conn.execute(text(f'GRANT CONNECT ON DATABASE "{conn.engine.url.database}" TO {role}'))
            granted = grant_app_role(conn, role)
    except DBAPIError as exc:
        print(f"db create-roles: {str(exc.orig).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"role {role} ready ({len(granted)} grants); the services connect as {role}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    settings = get_settings()
    if args.action == "create-roles":
        return _create_roles(args)
    owner_url = settings.owner_database_url
    if args.action == "upgrade":
        try:
            role = app_role_of(settings.database_url, owner_url)
        except ArgumentError:
            raise ConfigError(
                "CXR_DATABASE_URL or CXR_MIGRATION_DATABASE_URL is not a database URL"
            ) from None
        upgrade(owner_url, args.revision, app_role=role)
        engine = create_store_engine(owner_url)
        print(f"store at revision {current_revision(engine)} ({engine.url.render_as_string()})")
        if role:
            print(f"granted the application role {role} what the services need")
        engine.dispose()
        return 0
    engine = create_store_engine(owner_url)
    current = current_revision(engine)
    engine.dispose()
    head = head_revision()
    print(f"current: {current or 'none'}\nnewest:  {head}")
    return 0 if current == head else 1
