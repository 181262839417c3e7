"""``cxr-triage demo``: the whole path on this machine with synthetic studies.

Migrates the store, trains and activates a NON-CLINICAL demo model if none is active,
writes synthetic chest radiograph studies, starts gateway + worker + web, pushes the studies
over DICOM like a modality would, and prints the worklist URL. ``--prepare-only`` stops
before starting anything, so a script can prepare a machine non-interactively.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from cxr_triage.settings import Settings, get_settings
from cxr_triage.up import Supervisor, dicom_reach, prepare_store

logger = logging.getLogger(__name__)

DEMO_CALLING_AE = "CXRDEMO"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage demo",
        description="Run the demo: store migrated, a NON-CLINICAL demo model trained on synthetic "
        "images (a couple of minutes on a CPU, once), synthetic studies written and pushed over "
        "DICOM to the gateway, the worklist URL printed. Ctrl-C stops it.",
    )
    parser.add_argument("--studies", type=int, default=12, help="synthetic studies (default 12)")
    parser.add_argument(
        "--size", type=int, default=1024, help="synthetic image size in pixels (default 1024)"
    )
    parser.add_argument("--seed", type=int, default=2026, help="random seed for the studies")
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="migrate, register the demo model and write the studies; "
        "start nothing and push nothing",
    )
    parser.add_argument(
        "--exit-when-done",
        action="store_true",
        help="stop once every pushed study is triaged (for scripts and CI)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="with --exit-when-done: give up after this many seconds",
    )
    return parser


def prepare(settings: Settings, *, studies: int, size: int, seed: int) -> tuple[str, Path, str]:
    """Store migrated, demo model active, studies written, a radiologist token made.

    Returns the model version, the studies' folder and the token (shown once, stored hashed).
    """
    import datetime as dt

    from governance.db import Store
    from governance.models import Role
    from governance.tokens import create_token
    from training.demo import ensure_demo_model
    from training.synthetic.studies import write_studies

    prepare_store(settings)
    store = Store.from_settings(settings)
    try:
        version = ensure_demo_model(settings, store)
        name = f"demo-radiologist-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
        _, token = store.run(
            lambda s: create_token(
                s, name=name, role=Role.RADIOLOGIST, created_by="cxr-triage demo"
            )
        )
    finally:
        store.dispose()
    out = settings.data_dir / "demo-studies" / f"seed{seed}-n{studies}-{size}px"
    if not (out / "labels.csv").is_file():
        logger.info("writing %d synthetic studies to %s", studies, out)
        write_studies(out, studies, size=size, seed=seed)
    return version, out, token


def study_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.dcm"))


def _wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    return False


def _triage_progress(settings: Settings) -> tuple[int, int, int]:
    """(studies, finished, flagged) in the store (read directly: no token needed)."""
    from sqlalchemy import func, select

    from governance.db import Store
    from governance.models import Study, StudyInference, StudyStatus

    store = Store.from_settings(settings)
    try:
        with store.read() as session:
            total = session.scalar(select(func.count()).select_from(Study)) or 0
            done = (
                session.scalar(
                    select(func.count())
                    .select_from(Study)
                    .where(
                        Study.status.in_(
                            [StudyStatus.TRIAGED, StudyStatus.NO_FRONTAL, StudyStatus.FAILED]
                        )
                    )
                )
                or 0
            )
            flagged = (
                session.scalar(
                    select(func.count())
                    .select_from(Study)
                    .join(StudyInference, Study.result_id == StudyInference.id)
                    .where(StudyInference.flagged.is_(True))
                )
                or 0
            )
        return total, done, flagged
    finally:
        store.dispose()


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.studies < 1:
        print("cxr-triage demo: --studies must be at least 1", file=sys.stderr)
        return 2
    settings = get_settings()
    version, folder, token = prepare(settings, studies=args.studies, size=args.size, seed=args.seed)
    files = study_files(folder)
    print(
        f"demo model: {version} (NON-CLINICAL)\nstudies:    {len(files)} files in {folder}\n"
        f"login:      radiologist token {token}\n            (shown once; paste it on the "
        "login page, or send it as `Authorization: Bearer ...` to the API)"
    )
    if args.prepare_only:
        print("prepared; run `cxr-triage demo` or `cxr-triage up` to start the services")
        return 0

    from dicom_gateway.scu import send_files, wait_for_echo

    supervisor = Supervisor(log_level=logging.getLevelName(logging.getLogger().level))
    supervisor.start()
    try:
        host = "127.0.0.1" if settings.dicom_host in {"0.0.0.0", "::"} else settings.dicom_host
        url = f"http://{settings.web_host}:{settings.web_port}/"
        if not wait_for_echo(host, settings.dicom_port, settings.ae_title, timeout=60):
            logger.error("the gateway did not answer C-ECHO on %s:%d", host, settings.dicom_port)
            supervisor.stop()
            return 1
        if not _wait_http(url + "healthz", timeout=60):
            logger.error("the web server did not answer on %s", url)
            supervisor.stop()
            return 1
        by_study: dict[Path, list[Path]] = {}
        for path in files:
            by_study.setdefault(path.parent, []).append(path)
        for study_files_ in by_study.values():  # one association per study, like a modality
            report = send_files(
                study_files_,
                host,
                settings.dicom_port,
                settings.ae_title,
                calling_ae=DEMO_CALLING_AE,
            )
            for failed_path, why in report.failed:
                logger.error("could not send %s: %s", failed_path, why)
        reach = dicom_reach(settings.dicom_host, settings.allowed_calling_aes)
        print(
            f"pushed {len(by_study)} studies over DICOM to {settings.ae_title}@{host}:"
            f"{settings.dicom_port}{reach}\n\n  worklist: {url}\n\nCtrl-C stops the demo."
        )
        if args.exit_when_done:
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                total, done, flagged = _triage_progress(settings)
                if total >= len(by_study) and done >= total:
                    print(f"triaged {done} studies, {flagged} flagged for priority reading")
                    supervisor.stop()
                    return 0
                if supervisor.poll() is not None:
                    break
                time.sleep(0.5)
            logger.error("studies were not all triaged in %.0f s", args.timeout)
            supervisor.stop()
            return 1
        return supervisor.run_until_interrupted()
    except BaseException:
        supervisor.stop()
        raise
