"""Receive throughput of the durable gateway against dcmtk's storescp, side by side.

Writes synthetic 12-bit DICOM files once (noise plus gradients, uncompressed; one study per
association), then, for 1 and for 4 concurrent associations (dcmtk ``storescu +sd``, one study
each), and for the gateway on SQLite and on PostgreSQL, pushes the same files into

(a) ``storescp +B --max-pdu 131072`` writing to a folder (bit-preserving, no fsync, no store),
    which serves one association at a time (the others wait for it), and, for concurrent
    associations, also ``storescp +B --fork`` (a process per association);
(b) ``cxr-triage gateway`` as a subprocess (embedded filesystem broker), which answers each
    C-STORE Success only after fdatasync of the file, its rename into the spool, fsync of the
    folder and the commit of its row (SQLite WAL synchronous=FULL, or PostgreSQL), the rows of
    the instances waiting together committed in one transaction (group commit).

Each row prints MB/s of storescp (and of storescp --fork), the gateway's MB/s and files/s, the
ratios, the committer's instances and transactions (their quotient: instances per
transaction), and the gateway's resident memory sampled as the volume grows (VmRSS after a
quarter, half, three quarters and all of it, and the peak VmHWM), so that RSS can be seen flat.
With the default 60 files per association the 4-association rows receive about 2 GB each.
Timings are the wall-clock time from starting the storescu processes until the last one exits;
absolute figures are noisy on a shared machine: compare within one run.

    python benchmarks/gateway_throughput.py --files 60 --size 2048
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from _common import load_line, postgres_schema, radiograph_ds
from pydicom.uid import generate_uid

DCMTK = Path("/usr/bin")  # pynetdicom installs Python apps of the same names in the venv


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway_throughput.py",
        description="Compare the gateway's C-STORE receive throughput with dcmtk's storescp.",
    )
    parser.add_argument("--files", type=int, default=60, help="files per association")
    parser.add_argument("--size", type=int, default=2048, help="rows and columns of each image")
    parser.add_argument(
        "--associations", default="1,4", help="comma-separated concurrent associations to run"
    )
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="gateway stores to run (comma-separated)"
    )
    parser.add_argument(
        "--postgres",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        help="PostgreSQL URL; each run works in a schema of its own there",
    )
    parser.add_argument(
        "--pdu", type=int, default=131072, help="max PDU of storescu/storescp (dcmtk max 131072)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="alternate runs per row; the median is printed"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    return parser


@dataclass
class Result:
    seconds: float
    megabytes: float
    files: int
    peak_rss_mb: float | None = None
    # (megabytes received, VmRSS MB) samples, in order.
    rss: list[tuple[float, float]] = field(default_factory=list)
    commits: str = ""

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def write_files(folder: Path, count: int, size: int, seed: int = 0) -> float:
    """``count`` CR images of ``size``x``size`` 12-bit pixels in one study; their total MB."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    base = 1500 + 1200 * np.sin(x / size * np.pi) * np.cos(y / size * np.pi / 2)
    noise = rng.normal(0, 150, (size, size)).astype(np.float32)
    study_uid = generate_uid()
    total = 0
    for index in range(count):
        shifted = np.roll(noise, index * 7919, axis=1) + index % 97
        ds = radiograph_ds((base + shifted).clip(0, 4095), study_uid=study_uid)
        ds.PatientName, ds.PatientID = "Bench^Mark", "BENCH"
        ds.PatientSex, ds.PatientAge = "M", "050Y"
        ds.InstanceNumber = index + 1
        path = folder / f"im{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total / 1e6


def storescu(ports: list[int], folders: list[Path], called_ae: str, pdu: int) -> float:
    """Send each folder on an association of its own, all at once; wall-clock seconds."""
    # -ta: an association waiting for a storescp that serves one at a time must not time out.
    options = ["-aet", "BENCH", "-aec", called_ae, "-R", "+sd", "-ta", "600"]
    options += ["--max-pdu", str(pdu), "--max-send-pdu", str(pdu)]
    commands = [
        [str(DCMTK / "storescu"), *options, "127.0.0.1", str(port), str(folder)]
        for port, folder in zip(ports, folders, strict=True)
    ]
    start = time.perf_counter()
    processes = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    errors = [p.communicate()[1] for p in processes]
    seconds = time.perf_counter() - start
    for process, error in zip(processes, errors, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"storescu failed: {error[-2000:]}")
    return seconds


def run_storescp(
    work: Path, folders: list[Path], megabytes: float, files: int, pdu: int, fork: bool = False
) -> Result:
    port = free_port()
    out = work / "storescp-out"
    out.mkdir()
    command = [
        str(DCMTK / "storescp"), "-aet", "STORESCP", "+B", *(["--fork"] if fork else []),
        "--max-pdu", str(pdu),
        "-od", str(out), str(port),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        seconds = storescu([port] * len(folders), folders, "STORESCP", pdu)
    finally:
        process.terminate()
        process.wait(10)
    received = len(list(out.iterdir()))
    shutil.rmtree(out)
    if received != files:
        raise RuntimeError(f"storescp wrote {received} files, {files} were sent")
    return Result(seconds, megabytes, files)


def gateway_env(data_dir: Path, port: int, database_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        CXR_DATA_DIR=str(data_dir),
        CXR_DICOM_HOST="127.0.0.1",
        CXR_DICOM_PORT=str(port),
        CXR_AE_TITLE="CXRTRIAGE",
        # INFO for the committer's closing line (instances, transactions); a few lines in all.
        CXR_LOG_LEVEL="INFO",
    )
    if database_url:
        env["CXR_DATABASE_URL"] = database_url
    return env


def memory_mb(pid: int, field_name: str) -> float | None:
    """VmRSS or VmHWM of a process, MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sample_rss(
    pid: int, spool: Path, file_mb: float, stop: threading.Event
) -> list[tuple[float, float]]:
    """(MB received so far, VmRSS MB) every 0.2 s until ``stop``; MB from the spool's files."""
    samples: list[tuple[float, float]] = []
    while not stop.wait(0.2):
        rss = memory_mb(pid, "VmRSS")
        try:
            stored = sum(
                1
                for folder in os.scandir(spool)
                if folder.is_dir() and not folder.name.startswith(".")
                for _ in os.scandir(folder.path)
            )
        except OSError:
            continue
        if rss is not None:
            samples.append((stored * file_mb, rss))
    return samples


def run_gateway(
    work: Path,
    folders: list[Path],
    megabytes: float,
    files: int,
    pdu: int,
    database_url: str | None,
) -> Result:
    data_dir = work / "gateway-data"
    port = free_port()
    env = gateway_env(data_dir, port, database_url)
    cli = [sys.executable, "-m", "cxr_triage.cli"]
    subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True)
    log = work / "gateway.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [*cli, "gateway"], env=env, stdout=subprocess.PIPE, stderr=log_file, text=True
        )
    stop = threading.Event()
    samples: list[tuple[float, float]] = []
    sampler = threading.Thread(
        target=lambda: samples.extend(
            sample_rss(process.pid, data_dir / "spool", megabytes / files, stop)
        )
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        if not banner.startswith("cxr-triage gateway:"):
            raise RuntimeError(f"the gateway did not start: {banner}{log.read_text()[-2000:]}")
        wait_port(port)
        sampler.start()
        seconds = storescu([port] * len(folders), folders, "CXRTRIAGE", pdu)
        stop.set()
        sampler.join()
        samples.append((megabytes, memory_mb(process.pid, "VmRSS") or 0.0))
        peak = memory_mb(process.pid, "VmHWM")
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    finally:
        stop.set()
        if process.poll() is None:
            process.kill()
            process.wait()
    commits = next(
        (line.split("committer: ", 1)[1] for line in log.read_text().splitlines()
         if "committer: " in line),
        "",
    )  # fmt: skip
    engine = sa.create_engine(database_url or f"sqlite:///{data_dir / 'cxr-triage.db'}")
    with engine.connect() as db:
        rows = db.execute(sa.text("select count(*) from instances")).scalar_one()
        queued = db.execute(
            sa.text("select count(*) from studies where queued_at is not null")
        ).scalar_one()
    engine.dispose()
    shutil.rmtree(data_dir)
    if rows != files or queued != len(folders):
        raise RuntimeError(f"gateway recorded {rows} of {files} instances, queued {queued}")
    return Result(seconds, megabytes, files, peak, samples, commits)


def rss_profile(samples: list[tuple[float, float]], megabytes: float) -> str:
    """VmRSS after about 1/4, 1/2, 3/4 and all of the volume, MB."""
    marks = []
    for quarter in (0.25, 0.5, 0.75, 1.0):
        after = [rss for mb, rss in samples if mb >= quarter * megabytes * 0.98]
        marks.append(f"{after[0]:.0f}" if after else "-")
    return "/".join(marks)


def print_row(
    associations: int,
    backend: str,
    megabytes: float,
    references: tuple[Result, Result | None],
    ours: Result,
    label: str,
) -> None:
    reference, forked = references
    fork_mb_s = f"{forked.mb_per_s:>6.0f}" if forked else f"{'-':>6}"
    fork_ratio = f"{ours.mb_per_s / forked.mb_per_s:>5.2f}" if forked else f"{'-':>5}"
    peak = f"{ours.peak_rss_mb:.0f}" if ours.peak_rss_mb else "n/a"
    # "N instances in T transactions (largest L)" -> "N/T"
    commits = ours.commits.split(" (")[0]
    commits = commits.replace(" instances in ", "/").replace(" transactions", "")
    print(
        f"{associations:>5} {backend:<10} {ours.files:>5} {megabytes:>6.0f} | "
        f"{reference.mb_per_s:>8.0f} {fork_mb_s} | {ours.mb_per_s:>8.0f} {ours.files_per_s:>7.1f}"
        f" | {ours.mb_per_s / reference.mb_per_s:>5.2f} {fork_ratio} | {commits:>9} | "
        f"{rss_profile(ours.rss, megabytes):>15} {peak:>5} {label}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        associations = [int(a) for a in args.associations.split(",")]
    except ValueError:
        associations = []
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.files < 1 or args.size < 16 or args.repeat < 1 or not associations:
        print("--files, --repeat, --associations must be positive, --size >= 16", file=sys.stderr)
        return 2
    if min(associations) < 1 or not set(backends) <= {"sqlite", "postgresql"} or not backends:
        print("--associations: positive numbers; --backends: sqlite, postgresql", file=sys.stderr)
        return 2
    if not (DCMTK / "storescu").exists():
        print("dcmtk is not installed (apt-get install dcmtk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gw-bench-", dir=args.workdir))
    try:
        most = max(associations)
        print(f"writing {most} x {args.files} files of {args.size}x{args.size} 12-bit into {work}")
        start = time.perf_counter()
        sets = [work / f"study-{i}" for i in range(most)]
        sizes = [write_files(f, args.files, args.size, seed=i) for i, f in enumerate(sets)]
        # Written back now, not during the first row (where only the gateway, which fsyncs,
        # would wait behind the generator's dirty pages).
        os.sync()
        print(f"  {time.perf_counter() - start:.1f} s")
        print(f"{load_line()} at start\n")
        print(
            f"{'assoc':>5} {'store':<10} {'files':>5} {'MB':>6} | {'storescp':>8} {'--fork':>6} | "
            f"{'gateway':>8} {'files/s':>7} | {'ratio':>5} {'/fork':>5} | {'inst/txn':>9} | "
            f"{'VmRSS 1/4..all':>15} {'VmHWM':>5}"
        )
        print(f"{'':>5} {'':<10} {'':>5} {'':>6} | {'MB/s':>8} {'MB/s':>6} | {'MB/s':>8} {'':>7} |")
        for count in associations:
            folders = sets[:count]
            megabytes = sum(sizes[:count])
            files = args.files * count
            for backend in backends:
                trials = []
                for _ in range(args.repeat):
                    reference = run_storescp(work, folders, megabytes, files, args.pdu)
                    forked = None
                    if count > 1:
                        forked = run_storescp(work, folders, megabytes, files, args.pdu, True)
                    if backend == "postgresql":
                        with postgres_schema(args.postgres) as (_, url):
                            ours = run_gateway(work, folders, megabytes, files, args.pdu, url)
                    else:
                        ours = run_gateway(work, folders, megabytes, files, args.pdu, None)
                    trials.append((reference, forked, ours))
                    print_row(count, backend, megabytes, (reference, forked), ours, "")
                if args.repeat > 1:
                    reference = Result(
                        statistics.median(r.seconds for r, _, _ in trials), megabytes, files
                    )
                    forked = None
                    if count > 1:
                        seconds = statistics.median(f.seconds for _, f, _ in trials if f)
                        forked = Result(seconds, megabytes, files)
                    ours = Result(
                        statistics.median(o.seconds for _, _, o in trials),
                        megabytes,
                        files,
                        max(o.peak_rss_mb or 0 for _, _, o in trials),
                        trials[-1][2].rss,
                        trials[-1][2].commits,
                    )
                    print_row(count, backend, megabytes, (reference, forked), ours, "median")
        print(
            "\nstorescp: +B (bit-preserving), no fsync, no database; one association at a time, "
            "--fork: a process per association. gateway: before each Success, fdatasync of the "
            "file, rename, fsync of the folder and the commit of its row (SQLite WAL "
            "synchronous=FULL or PostgreSQL); inst/txn: instances / transactions of the group "
            "committer. VmRSS in MB after 1/4, 1/2, 3/4 and all of the volume; VmHWM: the peak."
        )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
