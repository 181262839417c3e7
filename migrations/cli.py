"""``cxr-triage db``: bring the store's schema up to date, or show where it stands."""

from __future__ import annotations

import argparse

from cxr_triage.settings import get_settings
from governance.db import create_store_engine
from migrations import current_revision, head_revision, upgrade


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage db",
        description="Manage the store's schema (Alembic migrations; the only way it changes). "
        "The store is CXR_DATABASE_URL (default: a SQLite file in CXR_DATA_DIR).",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = sub.add_parser(
        "upgrade",
        help="upgrade the schema to the newest revision",
        description="Upgrade the store's schema to the newest revision.",
    )
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    sub.add_parser(
        "current",
        help="print the store's revision and the newest one",
        description="Print the store's schema revision and the newest one.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    settings = get_settings()
    if args.action == "upgrade":
        upgrade(settings.database_url, args.revision)
        engine = create_store_engine(settings.database_url)
        print(f"store at revision {current_revision(engine)} ({engine.url.render_as_string()})")
        engine.dispose()
        return 0
    engine = create_store_engine(settings.database_url)
    current = current_revision(engine)
    engine.dispose()
    head = head_revision()
    print(f"current: {current or 'none'}\nnewest:  {head}")
    return 0 if current == head else 1
