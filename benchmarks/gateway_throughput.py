"""Receive throughput of the durable gateway against dcmtk's storescp, side by side.

Writes synthetic 12-bit DICOM files once (noise plus gradients, uncompressed), then pushes them
with dcmtk's ``storescu`` on one association (``+sd`` folder) into

(a) ``storescp +B --max-pdu 131072`` writing to a folder (bit-preserving, no fsync, no store);
(b) ``cxr-triage gateway`` as a subprocess (SQLite store in a tmp folder, synchronous=FULL,
    embedded filesystem broker, fsync of every file and its folder before Success),

for N and 2N files, and prints MB/s, files/s, the ratio and the gateway's peak RSS (VmHWM of
its process), so that RSS can be seen flat as the volume grows. Timings are wall-clock times of
the storescu process; absolute figures are noisy on a shared machine: compare within one run.

    python benchmarks/gateway_throughput.py --files 200 --size 2048
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

DCMTK = Path("/usr/bin")  # pynetdicom installs Python apps of the same names in the venv
CR_IMAGE_STORAGE = ComputedRadiographyImageStorage


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway_throughput.py",
        description="Compare the gateway's C-STORE receive throughput with dcmtk's storescp.",
    )
    parser.add_argument("--files", type=int, default=200, help="N: files in the first run")
    parser.add_argument("--size", type=int, default=2048, help="rows and columns of each image")
    parser.add_argument(
        "--scales", default="1,2", help="comma-separated multiples of N to run (default 1,2)"
    )
    parser.add_argument(
        "--pdu", type=int, default=131072, help="max PDU of storescu/storescp (dcmtk max 131072)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="alternate runs per scale; the median is printed"
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


def write_files(folder: Path, count: int, size: int) -> None:
    """``count`` CR images of ``size``x``size`` 12-bit pixels in one study (noise + gradient)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    base = 1500 + 1200 * np.sin(x / size * np.pi) * np.cos(y / size * np.pi / 2)
    noise = rng.normal(0, 150, (size, size)).astype(np.float32)
    study_uid, series_uid = generate_uid(), generate_uid()
    for index in range(count):
        shifted = np.roll(noise, index * 7919, axis=1) + index % 97
        pixels = (base + shifted).clip(0, 4095).astype(np.uint16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = UID(CR_IMAGE_STORAGE)
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CR_IMAGE_STORAGE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientName, ds.PatientID = "Bench^Mark", "BENCH"
        ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
        ds.PatientSex, ds.PatientAge = "M", "050Y"
        ds.InstanceNumber = index + 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"im{index:05d}.dcm", enforce_file_format=True)


def link_set(source: Path, folder: Path, count: int) -> float:
    """Hard-link the first ``count`` files of ``source`` into ``folder``; their total MB."""
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in sorted(source.iterdir())[:count]:
        os.link(path, folder / path.name)
        total += path.stat().st_size
    return total / 1e6


def storescu(port: int, folder: Path, called_ae: str, pdu: int) -> float:
    """Send ``folder`` on one association; wall-clock seconds."""
    command = [
        str(DCMTK / "storescu"), "-aet", "BENCH", "-aec", called_ae, "-R", "+sd",
        "--max-pdu", str(pdu), "--max-send-pdu", str(pdu), "127.0.0.1", str(port), str(folder),
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr[-2000:]}")
    return seconds


def run_storescp(work: Path, folder: Path, megabytes: float, files: int, pdu: int) -> Result:
    port = free_port()
    out = work / "storescp-out"
    out.mkdir()
    command = [
        str(DCMTK / "storescp"), "-aet", "STORESCP", "+B", "--max-pdu", str(pdu),
        "-od", str(out), str(port),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        seconds = storescu(port, folder, "STORESCP", pdu)
    finally:
        process.terminate()
        process.wait(10)
    received = len(list(out.iterdir()))
    shutil.rmtree(out)
    if received != files:
        raise RuntimeError(f"storescp wrote {received} files, {files} were sent")
    return Result(seconds, megabytes, files)


def gateway_env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        CXR_DATA_DIR=str(data_dir),
        CXR_DICOM_HOST="127.0.0.1",
        CXR_DICOM_PORT=str(port),
        CXR_AE_TITLE="CXRTRIAGE",
        CXR_LOG_LEVEL="WARNING",
    )
    return env


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_gateway(work: Path, folder: Path, megabytes: float, files: int, pdu: int) -> Result:
    data_dir = work / "gateway-data"
    port = free_port()
    env = gateway_env(data_dir, port)
    cli = [sys.executable, "-m", "cxr_triage.cli"]
    subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True)
    process = subprocess.Popen(
        [*cli, "gateway"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        if not banner.startswith("cxr-triage gateway:"):
            errors = process.stderr.read() if process.stderr else ""
            raise RuntimeError(f"the gateway did not start: {banner}{errors}")
        wait_port(port)
        seconds = storescu(port, folder, "CXRTRIAGE", pdu)
        rss = peak_rss_mb(process.pid)
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with sqlite3.connect(data_dir / "cxr-triage.db") as db:
        rows = db.execute("select count(*) from instances").fetchone()[0]
        queued = db.execute("select count(*) from studies where queued_at is not null").fetchone()
    shutil.rmtree(data_dir)
    if rows != files or queued[0] != 1:
        raise RuntimeError(f"gateway recorded {rows} of {files} instances, queued {queued[0]}")
    return Result(seconds, megabytes, files, rss)


def print_row(count: int, megabytes: float, reference: Result, ours: Result, label: str) -> None:
    rss = f"{ours.peak_rss_mb:.0f} MB" if ours.peak_rss_mb else "n/a"
    print(
        f"{count:>6} {megabytes:>7.0f} | {reference.mb_per_s:>13.0f} "
        f"{reference.files_per_s:>8.1f} | {ours.mb_per_s:>12.0f} {ours.files_per_s:>8.1f}"
        f" | {ours.mb_per_s / reference.mb_per_s:>5.2f} | {rss:>13} {label}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    scales = [int(s) for s in args.scales.split(",")]
    if args.files < 1 or args.size < 16 or args.repeat < 1 or not scales or min(scales) < 1:
        print("--files, --repeat, --scales must be positive and --size >= 16", file=sys.stderr)
        return 2
    if not (DCMTK / "storescu").exists():
        print("dcmtk is not installed (apt-get install dcmtk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gw-bench-", dir=args.workdir))
    try:
        most = args.files * max(scales)
        print(f"writing {most} files of {args.size}x{args.size} 12-bit into {work} ...")
        start = time.perf_counter()
        write_files(work / "files", most, args.size)
        print(f"  {time.perf_counter() - start:.1f} s")
        print(
            f"\n{'files':>6} {'MB':>7} | {'storescp MB/s':>13} {'files/s':>8} | "
            f"{'gateway MB/s':>12} {'files/s':>8} | {'ratio':>5} | {'gateway VmHWM':>13}"
        )
        print(f"(load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
        for scale in scales:
            count = args.files * scale
            folder = work / f"set-{count}"
            megabytes = link_set(work / "files", folder, count)
            trials = []
            for _ in range(args.repeat):
                reference = run_storescp(work, folder, megabytes, count, args.pdu)
                ours = run_gateway(work, folder, megabytes, count, args.pdu)
                trials.append((reference, ours))
                print_row(count, megabytes, reference, ours, "")
            if args.repeat > 1:
                reference = Result(
                    statistics.median(r.seconds for r, _ in trials), megabytes, count
                )
                ours = Result(
                    statistics.median(o.seconds for _, o in trials),
                    megabytes,
                    count,
                    max(o.peak_rss_mb or 0 for _, o in trials),
                )
                print_row(count, megabytes, reference, ours, "median")
            shutil.rmtree(folder)
        print(
            "\nstorescp: +B (bit-preserving), no fsync, no database. gateway: fsync of file and "
            "folder, SQLite synchronous=FULL commit per instance, before each Success."
        )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
