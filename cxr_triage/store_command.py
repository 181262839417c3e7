"""What the store commands (``model``, ``policy``, ``token``, ``export``...) share: their start
(arguments parsed, settings read once, the store opened) and who they act as in the audit."""

from __future__ import annotations

import argparse
import getpass

from cxr_triage.settings import Settings, get_settings
from governance.db import Store


def parse_and_open(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> tuple[argparse.Namespace, Settings, Store]:
    """``argv`` parsed by ``parser``, the settings, and the store they name.

    ``Store.open`` refuses a store whose schema this code cannot use (one line, exit 2), so a
    command never half-runs against an old schema.
    """
    args = parser.parse_args(argv)
    settings = get_settings()
    return args, settings, Store.open(settings)


def cli_actor(name: str | None = None) -> str:
    """Who a command acts as in the audit trail: ``name`` when given, else ``cli:<OS user>``."""
    return name or f"cli:{getpass.getuser()}"
