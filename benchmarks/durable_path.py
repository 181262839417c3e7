"""Where an instance's time goes after its bytes arrive: the gateway's durable steps, timed.

For ``--files`` received files of ``--size`` x ``--size`` 12-bit pixels, times each step the
gateway takes before it answers Success (dicom_gateway/handlers.py): the header read
(``read_header``), fsync of the file (and, beside it, fdatasync), the rename into the study
folder, fsync of that folder, and the store commit (``record_instance``) on SQLite
(synchronous=FULL, WAL) and PostgreSQL, one instance per transaction and, as the gateway's
committer does under concurrent associations, four per transaction (``record_batch``, a
savepoint each; per instance). Prints the median and p95 milliseconds per step: the profile
the ingest target (1.5x storescp +B) is cut from.

The fsync steps above see a file with only its last bytes dirty. Two more steps stream each
file into the gateway's :class:`~dicom_gateway.incoming.IncomingFile` in 128 KB writes (one
PDU each) paced at ``--stream-mbps`` (about what pynetdicom receives at here), as a C-STORE
fills it, and time what is left before Success: the fdatasync with only the write-back
started every MB, and with the gateway's background fdatasync every 2 MB as well (its wait
and the last fdatasync). On a disk whose cache flush costs in proportion to what it flushes,
the difference is the time the background fdatasync saves each instance.

    python benchmarks/durable_path.py [--files 30] [--size 2048] [--postgres URL]
        [--stream-mbps 350]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from _common import load_line, radiograph_ds
from pydicom.uid import ComputedRadiographyImageStorage, generate_uid

from dicom_gateway import incoming as incoming_files
from dicom_gateway.commit import record_batch
from dicom_gateway.header import read_header
from governance.db import Store
from governance.studies import ReceivedInstance, record_instance
from migrations import upgrade


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=30)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument(
        "--postgres",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        help="PostgreSQL URL ('' to skip); the benchmark works in its own schema there",
    )
    parser.add_argument(
        "--stream-mbps",
        type=float,
        default=350.0,
        help="pace of the streamed writes, MB/s (default 350: pynetdicom's receive here)",
    )
    return parser


def stream(data: bytes, folder: Path, mbps: float) -> str:
    """Write ``data`` into an IncomingFile as PDUs arrive at ``mbps``; its path."""
    chunk = 128 * 1024
    started = time.perf_counter()
    with incoming_files.IncomingFile(folder) as received:
        for offset in range(0, len(data), chunk):
            received.write(data[offset : offset + chunk])
            received.file.flush()
            due = started + (offset + chunk) / (mbps * 1e6)
            time.sleep(max(0.0, due - time.perf_counter()))
    return received.name


def streamed_steps(
    paths: list[Path],
    folder: Path,
    mbps: float,
    timed,  # type: ignore[no-untyped-def]
) -> None:
    """Time what is left before Success once a file has streamed in, without and with the
    background fdatasync (alternating, one file each)."""
    every = incoming_files.SYNC_BYTES
    for i, path in enumerate(paths):
        data = path.read_bytes()
        background = i % 2 == 1
        incoming_files.SYNC_BYTES = every if background else 1 << 62
        try:
            name = stream(data, folder, mbps)
        finally:
            incoming_files.SYNC_BYTES = every
        label = "streamed: bg + fdatasync" if background else "streamed: fdatasync"
        timed(
            label,
            lambda n=name: (incoming_files.settle(n), sync(Path(n), data_only=True)),
        )
        os.unlink(name)


def write_received(folder: Path, size: int, seed: int) -> tuple[Path, str, str]:
    rng = np.random.default_rng(seed)
    ds = radiograph_ds(rng.integers(0, 4096, (size, size), dtype=np.uint16))
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)


def sync(path: Path, data_only: bool, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        (os.fdatasync if data_only else os.fsync)(fd)
    finally:
        os.close(fd)


def own_schema(url: str, schema: str) -> str:
    """Create ``schema`` and return ``url`` with it as the search path."""
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    engine.dispose()
    return (
        sa.make_url(url)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )


def drop_schema(url: str, schema: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    print(load_line())
    steps: dict[str, list[float]] = {}

    def timed(name: str, fn):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        out = fn()
        steps.setdefault(name, []).append((time.perf_counter() - started) * 1000)
        return out

    with tempfile.TemporaryDirectory(dir=os.environ.get("CXR_BENCH_DIR")) as tmp:
        root = Path(tmp)
        incoming = root / ".incoming"
        incoming.mkdir()
        stores = {"sqlite": f"sqlite:///{root / 'store.db'}"}
        if args.postgres:
            stores["postgresql"] = own_schema(args.postgres, f"bench_durable_{os.getpid()}")
        opened = {}
        for name, url in stores.items():
            try:
                upgrade(url)
                opened[name] = Store.from_url(url)
            except Exception as exc:  # noqa: BLE001 - a missing server skips that backend
                print(f"skipping {name}: {type(exc).__name__}")
        received: list[ReceivedInstance] = []
        for i in range(args.files):
            path, sop_uid, study_uid = write_received(incoming, args.size, i)
            sync(path, data_only=False)  # settle the writer's own dirty pages first
            with path.open("r+b") as handle:  # dirty the file again, as a fresh receive would
                handle.seek(0, os.SEEK_END)
                handle.write(b"\0\0")
            header = timed(
                "header read",
                lambda p=path, s=sop_uid: read_header(
                    p,
                    affected_sop_class_uid=ComputedRadiographyImageStorage,
                    affected_sop_instance_uid=s,
                ),
            )
            data_only = i % 2 == 1
            timed(
                "fdatasync file" if data_only else "fsync file",
                lambda p=path, d=data_only: sync(p, d),
            )
            folder = root / study_uid
            timed("mkdir + fsync root", lambda f=folder: (f.mkdir(), sync(root, False, True)))
            target = folder / path.name
            timed("rename", lambda p=path, t=target: os.replace(p, t))
            timed("fsync folder", lambda f=folder: sync(f, False, True))
            item = dataclasses.replace(header, path=str(target), calling_ae="BENCH")
            received.append(item)
            for name, store in opened.items():
                timed(
                    f"commit {name}",
                    lambda s=store, it=item: s.run(lambda session: record_instance(session, it)),
                )
        streamed_steps(
            [Path(it.path) for it in received[: 2 * (len(received) // 2)]],
            incoming,
            args.stream_mbps,
            timed,
        )
        # Group commit: the same rows again as new instances, four to a transaction.
        for start in range(0, len(received) - 3, 4):
            batch = [
                dataclasses.replace(it, sop_instance_uid=generate_uid(), path=f"{it.path}.{n}")
                for n, it in enumerate(received[start : start + 4])
            ]
            for name, store in opened.items():
                started = time.perf_counter()
                store.run(lambda session, b=batch: record_batch(session, b))
                per_instance = (time.perf_counter() - started) * 1000 / len(batch)
                steps.setdefault(f"commit {name}, 4/txn", []).append(per_instance)
        for store in opened.values():
            store.dispose()
        if "postgresql" in stores:
            drop_schema(args.postgres, f"bench_durable_{os.getpid()}")
    print(f"{args.files} files of {args.size}x{args.size} (fsync and fdatasync alternate)")
    print(f"{'step (ms per instance)':<26}{'median':>8}{'p95':>8}")
    for name, values in steps.items():
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        print(f"{name:<26}{statistics.median(values):>8.2f}{p95:>8.2f}")


if __name__ == "__main__":
    main()
