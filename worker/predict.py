"""``cxr-triage predict FILE|DIR...``: score DICOM files offline, one JSON line per file.

Uses the active model version and the policy in force (or ``--model VERSION``), through the
same selection, preprocessing and calibration as the worker. Nothing is written to the store.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cxr_triage.settings import get_settings
from governance.db import Store
from governance.errors import ConfigError, NoActiveModel
from governance.policies import policy_in_force
from governance.registry import active_model, get_model
from governance.triage_results import decide
from worker.inference import ModelCache, ModelSpec
from worker.triage import Candidate, score_images

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Tau:
    tau: float


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage predict",
        description="Score DICOM files offline with a registered model version and print one "
        "JSON line per file: path, probability, logit, model_version, tau, flagged, or "
        "skipped_reason. Folders are searched recursively.",
    )
    parser.add_argument("paths", nargs="+", metavar="FILE|DIR", help="DICOM files or folders")
    parser.add_argument(
        "--model", metavar="VERSION", help="model version (default: the active one)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per forward pass (default: CXR_BATCH_SIZE)",
    )
    return parser


def iter_files(paths: list[str]) -> Iterator[Path]:
    """Files named, and files under folders named, in a stable order.

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(
                p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
            )
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(2, "no such file or folder", str(path))


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    settings = get_settings()
    files = list(iter_files(args.paths))
    store = Store.from_url(settings.database_url)
    store.check_schema()
    with store.read() as session:
        model = get_model(session, args.model) if args.model else active_model(session)
        if model is None:
            raise NoActiveModel("no active model version; pass --model VERSION or activate one")
        policy = policy_in_force(session, model.id)
        spec = ModelSpec.of(model)
        tau = policy.tau if policy else None
        policy_tau = _Tau(tau) if tau is not None else None
    store.dispose()
    cache = ModelCache(device=settings.device, precision=settings.precision)
    batch = args.batch_size or settings.batch_size
    if batch < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch}")
    chunk = max(batch, 32)
    for start in range(0, len(files), chunk):
        part = files[start : start + chunk]
        todo = [Candidate(i, path.name, str(path)) for i, path in enumerate(part)]
        results = score_images(cache, spec, todo, batch_size=batch)
        for result in sorted(results, key=lambda r: r.instance_id):
            line: dict[str, object] = {
                "path": str(part[result.instance_id]),
                "model_version": spec.version,
                "tau": tau,
            }
            if result.probability is None:
                line["skipped_reason"] = result.skipped_reason
            else:
                line.update(
                    probability=round(result.probability, 6),
                    logit=round(float(result.logit or 0.0), 6),
                    flagged=decide([result], policy_tau).flagged,
                )
            sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
    return 0
