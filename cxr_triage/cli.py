"""The ``cxr-triage`` command: one entry point that dispatches lazily to each package.

Each subcommand lives with the package that owns it and has its own ``main(argv)`` with its own
``--help``; this module only knows their names, so ``cxr-triage gateway`` never imports torch.
Errors a person can fix (a wrong path, URL or setting) end as one line on stderr, not a traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

# name -> (module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("cxr_triage.up", "run gateway + worker + web on this machine (embedded defaults)"),
    "gateway": ("dicom_gateway.main", "run the DICOM gateway (C-ECHO, C-STORE SCP)"),
    "worker": ("worker.main", "run a Celery triage worker (one process per GPU)"),
    "results-worker": ("results.main", "run the results worker: SR, heatmaps, notifications"),
    "beat": ("worker.beat", "run the scheduler: drift and recalibration jobs (Celery beat)"),
    "web": ("web.main", "run the web server: worklist, study pages, API, metrics"),
    "demo": ("cxr_triage.demo", "prepare a demo model and synthetic studies, run and push them"),
    "synth": ("training.synthetic.studies", "write synthetic chest radiograph studies as DICOM"),
    "train": ("training.train", "train, calibrate, export and register a ResNet-50"),
    "evaluate": ("training.evaluate", "evaluate a model on a dataset: metrics, plots, report"),
    "predict": ("worker.predict", "score DICOM files offline; JSON lines on stdout"),
    "db": ("migrations.cli", "database schema: upgrade, current"),
    "model": ("cxr_triage.model_cli", "model versions: list, show, register, activate, rollback"),
    "policy": ("cxr_triage.policy_cli", "threshold policies: list, set"),
    "token": ("cxr_triage.token_cli", "API tokens: create, list, revoke"),
    "audit": ("cxr_triage.audit_cli", "audit trail: query, verify"),
    "export": ("cxr_triage.export_cli", "result exports and notifications: list, retry"),
    "monitor": ("cxr_triage.monitor_cli", "monitoring: drift, subgroup performance"),
    "labels": ("cxr_triage.labels_cli", "reference labels: import a CSV file"),
    "recalibrate": ("cxr_triage.recalibrate_cli", "recalibration jobs: run, list, approve, reject"),
    "study": ("cxr_triage.study_cli", "studies: list (e.g. --status failed), retry"),
}
# The headings --help lists the commands under.
GROUPS: dict[str, tuple[str, ...]] = {
    "services": ("up", "gateway", "worker", "results-worker", "beat", "web"),
    "models and data": ("demo", "synth", "train", "evaluate", "predict"),
    "administration": (
        "db",
        "model",
        "policy",
        "token",
        "audit",
        "export",
        "monitor",
        "labels",
        "recalibrate",
        "study",
    ),
}

# Commands that need an optional part of the install (cxr_triage.extras): checked before their
# module is imported, so a slim install (gateway, web, store) answers in one line. `up` checks
# for the worker extra itself, only when it is asked to run a worker.
NEEDS_EXTRA: dict[str, str] = {
    "worker": "worker",
    "predict": "worker",
    "train": "train",
    "evaluate": "train",
    "demo": "train",
}

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: cxr-triage [--log-level LEVEL] COMMAND [ARGS...]",
        "",
        "Chest X-ray pneumonia triage beside a PACS (research software; assistive triage only).",
        "",
    ]
    for heading, names in GROUPS.items():
        lines += [f"{heading}:"]
        lines += [f"  {name:<{width}}  {COMMANDS[name][1]}" for name in names]
        lines += [""]
    lines += [
        "Run `cxr-triage COMMAND --help` for a command's options. Settings come from CXR_*",
        "environment variables or a .env file (see README.md).",
    ]
    return "\n".join(lines)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    for noisy in (
        "pynetdicom",
        "PIL",
        "matplotlib",
        "multipart",
        "alembic.runtime.plugins",
        "openjpeg",
    ):
        if level.upper() != "DEBUG":
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _load(name: str) -> Callable[[list[str]], int | None]:
    module = importlib.import_module(COMMANDS[name][0])
    return module.main  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    level = os.environ.get("CXR_LOG_LEVEL", "INFO")
    if len(args) >= 2 and args[0] == "--log-level":
        level, args = args[1], args[2:]
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if args[0] == "--version":
        from cxr_triage import __version__

        print(f"cxr-triage {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"cxr-triage: unknown command {name!r}; run `cxr-triage --help`", file=sys.stderr)
        return 2
    if level.upper() not in logging.getLevelNamesMapping():
        print(f"cxr-triage: unknown log level {level!r}", file=sys.stderr)
        return 2
    configure_logging(level)
    return run_command(name, rest)


def run_command(name: str, argv: list[str]) -> int:
    """Run one subcommand, turning the errors a person can fix into one line."""
    from pydantic import ValidationError

    from cxr_triage.extras import MissingExtra, extra_providing, require
    from governance.errors import TriageError

    try:
        if name in NEEDS_EXTRA:
            require(NEEDS_EXTRA[name])
        result = _load(name)(argv)
    except KeyboardInterrupt:
        return 130
    except MissingExtra as exc:
        print(f"cxr-triage {name}: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        # An import deep inside a command that the table above does not foresee.
        extra = extra_providing(exc.name or "")
        if extra is None:
            raise
        print(f"cxr-triage {name}: {MissingExtra(extra, exc.name or '')}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        print(
            f"cxr-triage {name}: bad setting CXR_{where.upper()}: {first['msg']}", file=sys.stderr
        )
        return 2
    except TriageError as exc:
        print(f"cxr-triage {name}: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        target = exc.filename or ""
        print(f"cxr-triage {name}: {exc.strerror}: {target}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
