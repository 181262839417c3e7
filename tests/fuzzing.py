"""A malformed-input corpus and a bounded mutation fuzzer over synthetic CR instances.

Used by the tests (a fixed corpus and a short fuzz run) and by ``benchmarks/fuzz.py`` (long
runs). Everything is built in memory from a small synthetic radiograph: no file from outside.

A case is the bytes of a data set (without File Meta) plus the request's SOP Class and
Instance UIDs and the transfer syntax it goes in; :func:`tests.dicom_gateway.rawsend.send_raw`
sends it exactly as it is.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

CR = "1.2.840.10008.5.1.4.1.1.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

#: DIMSE statuses the gateway may answer to a malformed instance: anything else (0x0110, a
#: processing failure, or no answer) is a crash or a hang of the gateway.
REFUSALS = {0xA700, 0xA900, 0xC000, 0x0122}
SUCCESS = 0x0000


def radiograph(
    *, study_uid: str | None = None, size: int = 64, seed: int = 0, frames: int = 1
) -> Dataset:
    """A small 12-bit MONOCHROME2 CR chest PA with smooth random content."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((4, 4))
    image = np.kron(coarse, np.ones((size // 4 + 1, size // 4 + 1)))[:size, :size]
    stored = np.round(image * 4000 + rng.normal(0, 30, image.shape)).clip(0, 4095).astype("<u2")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CR
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = UID(CR)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientID = "FUZZ-1"
    ds.PatientSex = "F"
    ds.PatientAge = "050Y"
    ds.Manufacturer = "Synthetic"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
        stored = np.concatenate([stored] * frames)
    ds.PixelData = stored.tobytes()
    return ds


def encode(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """The data set's bytes in an uncompressed ``syntax`` (File Meta left out)."""
    from pynetdicom.dsutils import encode as dimse_encode

    uid = UID(syntax)
    data = dimse_encode(ds, uid.is_implicit_VR, uid.is_little_endian)
    assert data is not None
    return data


@dataclass(frozen=True)
class Case:
    """One C-STORE to send and what the gateway may answer."""

    name: str
    sop_class_uid: str
    sop_instance_uid: str
    data: bytes
    transfer_syntax: str = ExplicitVRLittleEndian
    context_sop_class_uid: str | None = None
    expected: frozenset[int] = field(default_factory=lambda: frozenset(REFUSALS | {SUCCESS}))
    #: For an accepted case: a words that the worker's skip reason must contain (None: scored).
    worker_reason: str | None = None


def _case(name: str, ds: Dataset, expected: set[int], **kwargs: object) -> Case:
    syntax = str(kwargs.pop("transfer_syntax", ExplicitVRLittleEndian))
    data = kwargs.pop("data", None)
    return Case(
        name,
        str(ds.SOPClassUID),
        str(ds.SOPInstanceUID),
        data if isinstance(data, bytes) else encode(ds, syntax),
        transfer_syntax=syntax,
        expected=frozenset(expected),
        **kwargs,  # type: ignore[arg-type]
    )


def _pixel_offset(data: bytes) -> int:
    index = data.rfind(b"\xe0\x7f\x10\x00")
    assert index > 0
    return index


def malformed_corpus(study_uid: str | None = None) -> list[Case]:
    """The malformed inputs of issue 9, each with the statuses the gateway may answer.

    Those the gateway accepts (their header is sound) carry the skip reason the worker must
    record instead of a score.
    """
    study_uid = study_uid or generate_uid()
    cases: list[Case] = []

    ds = radiograph(study_uid=study_uid, seed=1)
    data = encode(ds)
    cases.append(_case("truncated data set", ds, {0xC000, 0xA900}, data=data[: len(data) // 3]))

    ds = radiograph(study_uid=study_uid, seed=2)
    data = encode(ds)
    head = _pixel_offset(data)
    # (0008,0070) Manufacturer LO whose 16-bit length runs past the end of the data set.
    index = data.find(b"\x08\x00\x70\x00LO")
    broken = data[: index + 6] + struct.pack("<H", 0xFFF0) + data[index + 8 : head]
    cases.append(_case("element length past the end", ds, {0xC000, 0xA900}, data=broken))

    ds = radiograph(study_uid=study_uid, seed=3)
    data = encode(ds, ImplicitVRLittleEndian)
    # (0010,0020) Patient ID with an undefined length (only SQ and encapsulated data may).
    index = data.find(b"\x10\x00\x20\x00")
    broken = data[: index + 4] + b"\xff\xff\xff\xff" + data[index + 8 :]
    cases.append(
        _case(
            "undefined length on a string",
            ds,
            {0xC000, 0xA900},
            data=broken,
            transfer_syntax=ImplicitVRLittleEndian,
        )
    )

    ds = radiograph(study_uid=study_uid, seed=4)
    del ds.PixelData
    cases.append(_case("missing Pixel Data", ds, {0xA900}))

    ds = radiograph(study_uid=study_uid, seed=5)
    ds.BitsStored = 20
    cases.append(
        _case("Bits Stored over Bits Allocated", ds, {SUCCESS}, worker_reason="Bits Stored")
    )

    ds = radiograph(study_uid=study_uid, seed=6)
    ds.Rows = 640
    cases.append(
        _case(
            "Rows x Columns over the pixel bytes", ds, {SUCCESS}, worker_reason="Pixel Data holds"
        )
    )

    ds = radiograph(study_uid=study_uid, seed=7)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(200)])  # JPEG-LS under RLE
    cases.append(
        _case(
            "compressed data under another transfer syntax",
            ds,
            {SUCCESS},
            data=encode(ds, ExplicitVRLittleEndian),
            transfer_syntax=RLELossless,
            worker_reason="decode",
        )
    )

    ds = radiograph(study_uid=study_uid, seed=8)
    ds.SOPClassUID = BASIC_TEXT_SR
    cases.append(
        _case("non-image SOP class on a CR context", ds, {0x0122}, context_sop_class_uid=CR)
    )

    ds = radiograph(study_uid=study_uid, seed=9)
    case = _case("SOP Instance UID mismatch", ds, {0xA900})
    cases.append(
        Case(case.name, case.sop_class_uid, generate_uid(), case.data, expected=case.expected)
    )

    ds = radiograph(study_uid=study_uid, seed=10, frames=2)
    cases.append(_case("multi-frame (2 frames)", ds, {SUCCESS}))

    ds = radiograph(study_uid=study_uid, seed=11, frames=6)
    cases.append(_case("multi-frame over the frame cap", ds, {SUCCESS}, worker_reason="frames"))

    ds = radiograph(study_uid=study_uid, seed=12)
    ds.BodyPartExamined = "CHEST"
    ds.Manufacturer = "M" * 300
    ds.add_new(0x00181030, "LO", "P" * 400)  # Protocol Name, not kept
    cases.append(_case("over-long header values", ds, {SUCCESS}))
    return cases


# -- mutation fuzzer ---------------------------------------------------------------------------

_INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]
_INTERESTING_32 = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 0x10000]


def _element_offsets(data: bytes, limit: int) -> list[int]:
    """Offsets of explicit VR little endian element headers before ``limit`` (a rough scan)."""
    offsets = []
    position = 0
    while position + 8 <= limit:
        vr = data[position + 4 : position + 6]
        if not vr.isalpha() or not vr.isupper():
            break
        offsets.append(position)
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            (length,) = struct.unpack("<L", data[position + 8 : position + 12])
            if length == 0xFFFFFFFF:
                break
            position += 12 + length
        else:
            (length,) = struct.unpack("<H", data[position + 6 : position + 8])
            position += 8 + length
    return offsets


def mutate(data: bytes, rng: random.Random, max_size: int = 1 << 20) -> tuple[str, bytes]:
    """One mutation of a data set's bytes; its name and the result (at most ``max_size``)."""
    buffer = bytearray(data)
    header_end = min(len(buffer), max(_pixel_offset(data) + 12, 16))
    kind = rng.choice(
        ["flip", "byte", "length", "length32", "truncate", "duplicate", "delete", "insert", "vr"]
    )
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(header_end)
            buffer[i] ^= 1 << rng.randrange(8)
    elif kind == "byte":
        for _ in range(rng.randint(1, 4)):
            buffer[rng.randrange(header_end)] = rng.choice(_INTERESTING)
    elif kind in ("length", "length32", "vr"):
        offsets = _element_offsets(data, header_end) or [0]
        at = rng.choice(offsets)
        if kind == "length":
            buffer[at + 6 : at + 8] = struct.pack(
                "<H", rng.choice([0, 1, 0xFFFF, rng.randrange(65536)])
            )
        elif kind == "length32" and at + 12 <= len(buffer):
            value = rng.choice(_INTERESTING_32 + [rng.randrange(1 << 32)])
            buffer[at + 8 : at + 12] = struct.pack("<L", value)
        else:
            buffer[at + 4 : at + 6] = rng.choice([b"SQ", b"OB", b"UN", b"UT", b"US", b"xx"])
    elif kind == "truncate":
        del buffer[rng.randrange(len(buffer)) :]
    elif kind == "duplicate":
        start = rng.randrange(header_end)
        chunk = buffer[start : start + rng.randint(1, 256)]
        at = rng.randrange(header_end)
        buffer[at:at] = chunk * rng.randint(1, 64)
    elif kind == "delete":
        start = rng.randrange(header_end)
        del buffer[start : start + rng.randint(1, 64)]
    else:
        at = rng.randrange(header_end)
        buffer[at:at] = bytes(rng.choice(_INTERESTING) for _ in range(rng.randint(1, 64)))
    return kind, bytes(buffer[:max_size])


def fuzz_cases(count: int, seed: int = 0) -> Iterator[Case]:
    """``count`` mutated cases over the synthetic corpus (deterministic for a seed)."""
    rng = random.Random(seed)
    study_uid = generate_uid()
    seeds = [radiograph(study_uid=study_uid, seed=s, size=32) for s in range(4)]
    for index in range(count):
        ds = rng.choice(seeds)
        kind, data = mutate(encode(ds), rng)
        yield Case(f"fuzz {index} ({kind})", CR, str(ds.SOPInstanceUID), data)


@dataclass
class FuzzReport:
    """What a run of cases did to the gateway."""

    cases: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    unexpected: list[tuple[str, int | None]] = field(default_factory=list)
    no_answer: int = 0
    processing_failures: int = 0
    associations: int = 0
    ended_early: int = 0

    def add(self, case: Case, answer: int | None) -> None:
        self.cases += 1
        key = "none" if answer is None else f"0x{answer:04X}"
        self.statuses[key] = self.statuses.get(key, 0) + 1
        if answer is None:
            self.no_answer += 1
        elif answer == 0x0110:
            self.processing_failures += 1
        if answer not in case.expected:
            self.unexpected.append((case.name, answer))


def run_cases(
    host: str,
    port: int,
    cases: Iterator[Case] | list[Case],
    *,
    per_association: int = 100,
    timeout: float = 10.0,
    report: FuzzReport | None = None,
) -> FuzzReport:
    """Send ``cases`` in associations of ``per_association``; a case left unanswered (the
    association ended) is counted and the rest go on a new association."""
    from tests.dicom_gateway.rawsend import RawInstance, send_raw

    report = report or FuzzReport()
    pending = list(cases)
    while pending:
        batch, pending = pending[:per_association], pending[per_association:]
        items = [
            RawInstance(
                c.sop_class_uid,
                c.sop_instance_uid,
                c.data,
                transfer_syntax=c.transfer_syntax,
                context_sop_class_uid=c.context_sop_class_uid,
            )
            for c in batch
        ]
        report.associations += 1
        statuses = send_raw(host, port, items, timeout=timeout, calling_ae="FUZZER")
        for case, answer in zip(batch, statuses, strict=False):
            report.add(case, answer)
        # The association ended early: the cases not sent go on a new one.
        if len(statuses) < len(batch):
            report.ended_early += 1
        pending = batch[len(statuses) :] + pending
    return report
