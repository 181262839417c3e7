"""``cxr-triage model``: list, show, register, activate and roll back model versions."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from cxr_triage.settings import Settings
from cxr_triage.store_command import cli_actor, parse_and_open
from governance.db import Store
from governance.errors import ConfigError
from governance.models import ModelStatus
from governance.policies import policy_in_force
from governance.registry import (
    activate_model,
    get_model,
    list_models,
    register_model,
    rollback_model,
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage model",
        description="Manage model versions in the registry (CXR_DATABASE_URL). A version serves "
        "only once it is active, and it can be activated only with a threshold policy.",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser(
        "list",
        help="list the registered versions",
        description="List registered model versions, newest last.",
    )
    show = sub.add_parser(
        "show",
        help="show one version with its details",
        description="Show a version's file, checksum, metrics and policies.",
    )
    show.add_argument("version")
    reg = sub.add_parser(
        "register",
        help="register a training run folder or a TorchScript file",
        description="Register a model. RUN_DIR: a `cxr-triage train` run folder (its export, "
        "metrics, operating points and calibration are read from it). FILE: a TorchScript "
        "file, with --version and --input-size.",
    )
    reg.add_argument("path", metavar="RUN_DIR|FILE")
    reg.add_argument("--version", help="version name (default for a run: derived from it)")
    reg.add_argument("--input-size", type=int, help="input size in pixels (FILE only)")
    reg.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="calibration temperature (FILE only; default 1.0)",
    )
    reg.add_argument(
        "--sha256", help="refuse the file (a run's model.pt) unless it has this SHA-256"
    )
    reg.add_argument(
        "--clinical", action="store_true", help="mark as a clinical model (default: non-clinical)"
    )
    act = sub.add_parser(
        "activate",
        help="make a version the one that serves",
        description="Activate a version; it needs a threshold policy.",
    )
    act.add_argument("version")
    act.add_argument("--actor", default=None, help="who activates (default: the OS user)")
    rb = sub.add_parser(
        "rollback",
        help="return to the previously active version",
        description="Re-activate the version that was active before this one.",
    )
    rb.add_argument("--actor", default=None, help="who rolls back (default: the OS user)")
    return parser


def _list(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    with store.read() as session:
        models = list_models(session)
        if not models:
            print("no model versions registered")
        for m in models:
            policy = policy_in_force(session, m.id)
            tau = (
                f"tau={policy.tau:.4f} ({policy.operating_point} v{policy.version})"
                if policy
                else "no policy"
            )
            marker = "*" if m.status == ModelStatus.ACTIVE else " "
            kind = "clinical" if m.clinical else "NON-CLINICAL"
            print(
                f"{marker} {m.version:<32} {m.status:<10} {m.architecture} "
                f"{m.input_size}px T={m.temperature:.3f} {kind} sha256={m.sha256[:12]} {tau}"
            )
    return 0


def _show(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    with store.read() as session:
        m = get_model(session, args.version)
        out = {
            "version": m.version,
            "status": m.status,
            "path": m.path,
            "sha256": m.sha256,
            "architecture": m.architecture,
            "input_size": m.input_size,
            "temperature": m.temperature,
            "clinical": m.clinical,
            "description": m.description,
            "registered_at": m.registered_at.isoformat(),
            "activated_at": m.activated_at.isoformat() if m.activated_at else None,
            "policies": [
                {
                    "version": p.version,
                    "operating_point": p.operating_point,
                    "tau": p.tau,
                    "approved_by": p.approved_by,
                    "effective_from": p.effective_from.isoformat(),
                    "rationale": p.rationale,
                }
                for p in m.policies
            ],
            "details": m.details,
        }
    print(json.dumps(out, indent=2, default=str))
    return 0


def _register(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    path = Path(args.path)
    if path.is_dir():
        from training.export import register_run

        for flag in ("input_size", "temperature"):
            if getattr(args, flag) is not None:
                raise ConfigError(
                    f"--{flag.replace('_', '-')} is read from the run folder; "
                    "give it only with a FILE"
                )
        model = register_run(
            store,
            path,
            version=args.version,
            actor=cli_actor(),
            model_dir=settings.model_path,
            clinical=args.clinical,
            expected_sha256=args.sha256,
        )
        print(f"registered {model.version} (sha256 {model.sha256[:12]}...) as {model.path}")
        return 0
    if not path.is_file():
        raise FileNotFoundError(2, "no such run folder or model file", str(path))
    if not args.version or not args.input_size:
        raise ConfigError("registering a FILE needs --version and --input-size")
    version, input_size = args.version, args.input_size
    model = store.run(
        lambda s: register_model(
            s,
            version=version,
            path=path,
            input_size=input_size,
            temperature=1.0 if args.temperature is None else args.temperature,
            clinical=args.clinical,
            expected_sha256=args.sha256,
            actor=cli_actor(),
        )
    )
    print(f"registered {model.version} (sha256 {model.sha256[:12]}...)")
    return 0


def _activate(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    model = store.run(lambda s: activate_model(s, args.version, actor=cli_actor(args.actor)))
    print(f"active: {model.version}")
    return 0


def _rollback(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    model = store.run(lambda s: rollback_model(s, actor=cli_actor(args.actor)))
    print(f"active: {model.version}")
    return 0


ACTIONS: dict[str, Callable[[argparse.Namespace, Settings, Store], int]] = {
    "list": _list,
    "show": _show,
    "register": _register,
    "activate": _activate,
    "rollback": _rollback,
}


def main(argv: list[str] | None = None) -> int:
    args, settings, store = parse_and_open(get_args_parser(), argv)
    return ACTIONS[args.action](args, settings, store)
