"""What the benchmarks share: the machine's load line, timing, a test radiograph as DICOM and a
throwaway PostgreSQL schema.

Imported by its siblings as ``from _common import ...`` (a benchmark runs as a script, with its
own folder first on ``sys.path``).
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import sqlalchemy as sa
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid


def load_line() -> str:
    """The machine's load, printed first: on a shared machine absolute figures are noisy."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``fn``, in milliseconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def radiograph_ds(stored: np.ndarray, *, study_uid: str | None = None) -> Dataset:
    """A CR chest PA of 12-bit ``stored`` pixels (MONOCHROME2), explicit VR little endian,
    with fresh instance and series UIDs (and study UID unless given)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "CR", "PA", "CHEST"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = stored.astype(np.uint16).tobytes()
    return ds


@contextmanager
def postgres_schema(url: str) -> Iterator[tuple[str, str]]:
    """A new schema on the PostgreSQL server at ``url``, dropped with all it holds on exit.

    Yields its name and a URL (psycopg driver) that has it as the search path, so that the
    benchmark's tables never meet anyone else's.
    """
    name = f"cxr_bench_{uuid.uuid4().hex[:10]}"
    server = sa.make_url(url).set(drivername="postgresql+psycopg")
    engine = sa.create_engine(server)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        try:
            schema_url = server.update_query_dict({"options": f"-csearch_path={name}"})
            yield name, schema_url.render_as_string(hide_password=False)
        finally:
            with engine.begin() as connection:
                connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    finally:
        engine.dispose()
