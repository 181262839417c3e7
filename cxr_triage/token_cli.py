"""``cxr-triage token``: create, list and revoke the API tokens of the web API and pages.

A local admin tool: whoever can run it on this machine can read the store anyway. A token is
printed once, when it is created; the store keeps only its SHA-256 and a short prefix.
"""

from __future__ import annotations

import argparse
import sys

from cxr_triage.store_command import cli_actor, parse_and_open
from governance.errors import ConfigError
from governance.models import Role
from governance.tokens import create_token, list_tokens, revoke_token


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage token",
        description="API tokens for the web API and the worklist login (CXR_DATABASE_URL). "
        "Roles: radiologist (worklist, study pages, acknowledge, override, final read), "
        "admin (models, policies, tokens), auditor (audit trail queries and verification).",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = sub.add_parser(
        "create",
        help="create a token and print it once",
        description="Create a token for a person or a program. It is printed once, on "
        "stdout; only its SHA-256 is kept, so store it now (a password manager).",
    )
    create.add_argument("--role", required=True, choices=Role.ALL, help="what the token may do")
    create.add_argument("--name", required=True, help="who it is for (unique; shown in the audit)")
    sub.add_parser(
        "list",
        help="list tokens (names, roles, prefixes; never the tokens)",
        description="List every token: name, role, prefix, created, last used, revoked.",
    )
    revoke = sub.add_parser(
        "revoke",
        help="revoke a token by name",
        description="Revoke a token: every request that presents it is refused from now on.",
    )
    revoke.add_argument("name")
    return parser


def _when(value: object) -> str:
    return f"{value:%Y-%m-%d %H:%M}Z" if value is not None else "-"


def main(argv: list[str] | None = None) -> int:
    args, _, store = parse_and_open(get_args_parser(), argv)
    try:
        if args.action == "create":
            name, role = args.name, args.role
            try:
                row, text = store.run(
                    lambda s: create_token(s, name=name, role=role, created_by=cli_actor())
                )
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            print(text)
            print(
                f"created {row.role} token {row.name!r} ({row.token_prefix}...): it is shown "
                "only now; log in at /login or send it as 'Authorization: Bearer TOKEN'",
                file=sys.stderr,
            )
            return 0
        if args.action == "list":
            with store.read() as session:
                lines = [
                    f"{t.name:<24} {t.role:<12} {t.token_prefix}...  created {_when(t.created_at)} "
                    f"by {t.created_by}  last used {_when(t.last_used_at)}  "
                    + (f"revoked {_when(t.revoked_at)}" if t.revoked_at else "active")
                    for t in list_tokens(session)
                ]
            print(
                "\n".join(lines)
                or "no tokens (create one: cxr-triage token create --role ROLE --name NAME)"
            )
            return 0
        if args.action == "revoke":
            name = args.name
            row = store.run(lambda s: revoke_token(s, name, actor=cli_actor()))
            print(f"revoked token {row.name!r} ({row.token_prefix}...)")
            return 0
        return 2
    finally:
        store.dispose()
