"""Mutation fuzzing of the DICOM gateway (and optionally the worker's image preparation).

Starts ``cxr-triage gateway`` as its own process (SQLite store and spool in a tmp folder),
sends N mutated synthetic CR instances (tests/fuzzing.py: bit flips, interesting bytes, broken
lengths and VRs, truncation, duplication, deletion, insertion), plus the malformed corpus, in
associations of ``--per-association``, and prints the cases tried, the DIMSE statuses, the
crashes (0x0110 processing failures, or the gateway process gone), the hangs (no answer in
``--timeout`` s) and the gateway's peak RSS (VmHWM), with the RSS of an idle gateway as the
reference. With ``--worker`` every case also goes through the worker's image preparation
(decode limits, preprocessing) in this process, counting exceptions that escape it.

    python benchmarks/fuzz.py --cases 10000 --seed 1 [--worker]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fuzzing import FuzzReport, fuzz_cases, malformed_corpus, run_cases  # noqa: E402


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _vm(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_gateway(folder: Path) -> tuple[subprocess.Popen[str], int]:
    from migrations import upgrade

    port = _free_port()
    url = f"sqlite:///{folder / 'store.db'}"
    upgrade(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        CXR_DATA_DIR=str(folder / "data"),
        CXR_DATABASE_URL=url,
        CXR_DICOM_HOST="127.0.0.1",
        CXR_DICOM_PORT=str(port),
    )
    log = open(folder / "gateway.log", "w")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [sys.executable, "-m", "cxr_triage.cli", "gateway"],
        env=env,
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert process.stdout is not None
    banner = process.stdout.readline()
    if not banner.startswith("cxr-triage gateway: "):
        raise SystemExit(f"the gateway did not start: {banner!r}; see {folder / 'gateway.log'}")
    return process, port


def worker_pass(cases: list, folder: Path) -> tuple[int, int, int]:
    """Each case through the worker's image preparation: (scored, skipped, escaped errors)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID

    from worker.limits import ImageLimits
    from worker.triage import Candidate, _prepare_image

    scored = skipped = escaped = 0
    path = folder / "case.dcm"
    for index, case in enumerate(cases):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(case.sop_class_uid)
        meta.MediaStorageSOPInstanceUID = UID(case.sop_instance_uid)
        meta.TransferSyntaxUID = UID(case.transfer_syntax)
        with open(path, "wb") as fp:
            fp.write(b"\x00" * 128 + b"DICM")
            write_file_meta_info(fp, meta)
            fp.write(case.data)
        try:
            _, tensor = _prepare_image(
                Candidate(index, case.sop_instance_uid, str(path)), 224, ImageLimits()
            )
        except Exception as exc:  # what the worker would not survive
            escaped += 1
            print(f"  worker: {case.name}: {type(exc).__name__}: {exc}")
            continue
        if tensor is None:
            skipped += 1
        else:
            scored += 1
    return scored, skipped, escaped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--per-association", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds for one answer")
    parser.add_argument("--worker", action="store_true", help="also run the worker's preparation")
    args = parser.parse_args(argv)

    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)  # every refused or skipped case logs a line
    with tempfile.TemporaryDirectory(prefix="cxr-fuzz-") as tmp:
        folder = Path(tmp)
        process, port = start_gateway(folder)
        try:
            time.sleep(0.5)
            idle_rss = _vm(process.pid, "VmRSS")
            cases = malformed_corpus() + list(fuzz_cases(args.cases, seed=args.seed))
            report = FuzzReport()
            started = time.monotonic()
            step = max(args.per_association, 1000)
            for start in range(0, len(cases), step):
                run_cases(
                    "127.0.0.1",
                    port,
                    cases[start : start + step],
                    per_association=args.per_association,
                    timeout=args.timeout,
                    report=report,
                )
                alive = process.poll() is None
                print(
                    f"{report.cases:6d} cases  {time.monotonic() - started:6.1f} s  "
                    f"gateway RSS {_vm(process.pid, 'VmRSS'):.0f} MB  alive={alive}",
                    flush=True,
                )
                if not alive:
                    break
            elapsed = time.monotonic() - started
            alive = process.poll() is None
            peak = _vm(process.pid, "VmHWM") if alive else float("nan")
        finally:
            process.terminate()
            process.wait(timeout=30)
        print()
        print(f"cases tried        {report.cases} ({len(cases)} planned) in {elapsed:.0f} s")
        print(f"associations       {report.associations} ({report.ended_early} ended early)")
        print(
            "statuses           "
            + ", ".join(f"{k}: {v}" for k, v in sorted(report.statuses.items()))
        )
        print(
            f"crashes            {report.processing_failures} processing failures (0x0110), "
            f"gateway {'up' if alive else 'DOWN'}"
        )
        print(
            f"hangs              {report.no_answer} cases without an answer in {args.timeout:g} s"
        )
        print(f"unexpected         {len(report.unexpected)} {report.unexpected[:10]}")
        print(f"gateway RSS        idle {idle_rss:.0f} MB (reference), peak {peak:.0f} MB")
        log = (folder / "gateway.log").read_text(errors="replace").splitlines()
        tracebacks = sum("Traceback" in line for line in log)
        aborted = sum("aborted" in line for line in log)
        print(f"gateway log        {len(log)} lines, {tracebacks} tracebacks, {aborted} aborts")
        for line in [x for x in log if "Traceback" in x or "Exception in DUL" in x][:5]:
            print("   ", line[:200])
        if args.worker:
            scored, skipped, escaped = worker_pass(cases, folder)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"worker preparation {scored} scored, {skipped} skipped, {escaped} escaped "
                f"errors; peak RSS of this process {rss:.0f} MB"
            )
    return 0 if alive and not report.processing_failures and not report.no_answer else 1


if __name__ == "__main__":
    raise SystemExit(main())
