"""Real DICOM peers for tests: Orthanc as a PACS and dcmtk's echoscu/storescu/storescp.

Fixtures (plugged in by ``tests/conftest.py``):

``make_orthanc(modalities=..., aet="ORTHANC", ...)``
    Start Debian's ``Orthanc`` as a plain process with its own JSON config: free HTTP and DICOM
    ports, storage in a tmp folder, no plugins, no authentication, and the given
    ``DicomModalities``. It returns an :class:`Orthanc` once HTTP answers; every instance is
    stopped with SIGTERM at teardown. Point a modality at our gateway and push a study::

        orthanc = make_orthanc(modalities={"triage": (settings.ae_title, "127.0.0.1",
                                                      settings.dicom_port)})
        ids = [orthanc.upload(path) for path in files]           # POST /instances
        answer = orthanc.push("triage", ids)                     # POST /modalities/triage/store
        assert answer["FailedInstancesCount"] == 0

Functions (plain helpers, no fixture needed):

- :func:`echoscu` runs dcmtk's C-ECHO SCU and returns the finished process.
- :func:`storescu` sends files or whole folders (``+sd``, one association) with every
  compressed transfer syntax proposed as well (a storescu config profile written next to the
  test's files), so compressed files go as they are; returns the finished process.
- :func:`start_storescp` starts dcmtk's storage SCP (bit-preserving) writing to a folder.
- :func:`peer_missing` skips a test whose peer is not installed, or fails it under
  ``scripts/test`` (``CXR_TEST_STRICT_PEERS=1``), which installs every peer first.
- :func:`pynetdicom_store` sends Part-10 files byte for byte with a pynetdicom SCU, the
  request's UIDs taken from each file's meta header (so a test can make them differ from the
  data set's), and can abort instead of releasing; returns the statuses.

dcmtk is called by absolute path (``/usr/bin``): pynetdicom installs Python apps of the same
names (``echoscu``, ``storescu``, ``storescp``) into the virtual environment's ``bin``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

DCMTK_BIN = Path(os.environ.get("CXR_TEST_DCMTK_BIN", "/usr/bin"))
ORTHANC_BIN = os.environ.get("CXR_TEST_ORTHANC", "/usr/sbin/Orthanc")

#: SOP classes the storescu profile proposes (the ones the gateway accepts, and MR to test a
#: refused SOP class).
STORESCU_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # DX for processing
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.4",  # MR
)
#: Transfer syntax groups of the storescu profile: uncompressed, then one per compressed syntax.
STORESCU_SYNTAX_GROUPS = {
    "Uncompressed": ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"),
    "JPEGBaseline": ("1.2.840.10008.1.2.4.50",),
    "JPEGLossless14": ("1.2.840.10008.1.2.4.57",),
    "JPEGLosslessSV1": ("1.2.840.10008.1.2.4.70",),
    "JPEGLSLossless": ("1.2.840.10008.1.2.4.80",),
    "JPEGLSNearLossless": ("1.2.840.10008.1.2.4.81",),
    "JPEG2000Lossless": ("1.2.840.10008.1.2.4.90",),
    "JPEG2000": ("1.2.840.10008.1.2.4.91",),
    "RLE": ("1.2.840.10008.1.2.5",),
}


# -- dcmtk -------------------------------------------------------------------------------------


#: Set by scripts/test, which installs every peer first: there a missing peer fails the test
#: rather than skip it (a skip would let a test that proves nothing pass quietly).
STRICT_PEERS = os.environ.get("CXR_TEST_STRICT_PEERS") == "1"


def peer_missing(reason: str) -> NoReturn:
    """Skip the test (a developer's machine without the peer), or fail it where every peer was
    installed (``CXR_TEST_STRICT_PEERS=1``)."""
    if STRICT_PEERS:
        pytest.fail(f"{reason} (CXR_TEST_STRICT_PEERS=1: scripts/test installs every peer)")
    pytest.skip(reason)


def dcmtk(name: str) -> str:
    """Absolute path of a dcmtk tool; skips the test when dcmtk is not installed."""
    path = DCMTK_BIN / name
    if not path.exists():
        peer_missing(f"dcmtk's {name} is not installed at {path} (apt-get install dcmtk)")
    return str(path)


def echoscu(
    host: str,
    port: int,
    *,
    called_ae: str = "CXRTRIAGE",
    calling_ae: str = "ECHOSCU",
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``echoscu`` once; ``returncode == 0`` means the C-ECHO succeeded."""
    return subprocess.run(
        [dcmtk("echoscu"), "-aet", calling_ae, "-aec", called_ae, "-to", "10", host, str(port)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def storescu_profile(path: Path) -> Path:
    """Write a storescu config whose ``Default`` profile proposes every test syntax.

    Without it storescu proposes uncompressed syntaxes only and fails on compressed files it
    cannot decompress (RLE, JPEG-LS, JPEG 2000).
    """
    lines = ["[[TransferSyntaxes]]"]
    for group, syntaxes in STORESCU_SYNTAX_GROUPS.items():
        lines.append(f"[{group}]")
        lines += [f"TransferSyntax{i} = {uid}" for i, uid in enumerate(syntaxes, start=1)]
    lines += ["[[PresentationContexts]]", "[AllImages]"]
    number = 1
    for sop_class in STORESCU_SOP_CLASSES:
        for group in STORESCU_SYNTAX_GROUPS:
            lines.append(f"PresentationContext{number} = {sop_class}\\{group}")
            number += 1
    lines += ["[[Profiles]]", "[Default]", "PresentationContexts = AllImages"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def storescu(
    host: str,
    port: int,
    paths: Sequence[Path],
    *,
    called_ae: str = "CXRTRIAGE",
    calling_ae: str = "STORESCU",
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Send files and folders (``+sd``: all their files) on one association with ``storescu``.

    Every compressed transfer syntax is proposed besides the uncompressed ones, so each file
    goes in its own syntax. ``returncode == 0`` means every C-STORE succeeded; storescu stops at
    the first failed one unless ``extra_args`` holds ``-nh``. ``-v`` output is in ``stderr``.
    """
    if not paths:
        raise ValueError("paths must name at least one file or folder")
    first = Path(paths[0])
    config = storescu_profile((first if first.is_dir() else first.parent).parent / "storescu.cfg")
    command = [
        dcmtk("storescu"),
        "-v",
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        "-xf",
        str(config),
        "Default",
        "+sd",
        "-to",
        "30",
        *extra_args,
        host,
        str(port),
        *(str(p) for p in paths),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def start_storescp(
    folder: Path,
    port: int,
    *,
    ae_title: str = "STORESCP",
    max_pdu: int = 131072,
    extra_args: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start dcmtk's ``storescp`` writing bit-preserving (``+B``) into ``folder``.

    The caller stops it (``proc.terminate(); proc.wait()``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            dcmtk("storescp"),
            "-aet",
            ae_title,
            "+B",
            "--max-pdu",
            str(max_pdu),
            "-od",
            str(folder),
            *extra_args,
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def pynetdicom_store(
    host: str,
    port: int,
    paths: Sequence[Path],
    *,
    called_ae: str = "CXRTRIAGE",
    calling_ae: str = "PYNETDICOM",
    abort: bool = False,
) -> list[int | None]:
    """Send Part-10 files on one association with a pynetdicom SCU; the C-STORE statuses.

    The data set bytes after each file's meta header go as they are, and the request's SOP
    Class/Instance UIDs and transfer syntax come from the meta header: a malformed data set or
    one whose UIDs differ from the request reaches the peer unchanged. ``abort=True`` ends the
    association with A-ABORT instead of A-RELEASE. A status is None when no answer came.
    """
    from pydicom.filereader import read_file_meta_info
    from pynetdicom import AE, _config

    metas = [read_file_meta_info(path) for path in paths]
    ae = AE(ae_title=calling_ae)
    pairs = {(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)) for m in metas}
    for sop_class, syntax in sorted(pairs):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise AssertionError(f"association with {called_ae}@{host}:{port} was not accepted")
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    statuses: list[int | None] = []
    try:
        for path in paths:
            answer = assoc.send_c_store(Path(path))
            statuses.append(int(answer.Status) if "Status" in answer else None)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        if abort:
            assoc.abort()
        else:
            assoc.release()
    return statuses


# -- Orthanc -----------------------------------------------------------------------------------


@dataclass
class Orthanc:
    """A running Orthanc: its REST base URL, DICOM port and AE title, and the process."""

    process: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int
    aet: str
    folder: Path
    log_path: Path
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
        timeout: float = 120.0,
    ) -> Any:
        """Call the REST API; returns the decoded JSON answer (or None for an empty one)."""
        req = urllib.request.Request(
            self.url + path, data=body, method=method, headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as answer:
                data = answer.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise AssertionError(f"Orthanc {method} {path}: HTTP {exc.code}: {detail}") from None
        return json.loads(data) if data else None

    def upload(self, path: Path) -> str:
        """Store one DICOM file in Orthanc (``POST /instances``); returns its Orthanc ID."""
        answer = self.request(
            "POST", "/instances", Path(path).read_bytes(), content_type="application/dicom"
        )
        return str(answer["ID"])

    def push(self, modality: str, resources: Sequence[str], timeout: float = 120.0) -> Any:
        """C-STORE resources (instance, series, study or patient IDs) to a modality, waiting.

        Returns Orthanc's answer: ``InstancesCount``, ``FailedInstancesCount``, ...
        """
        body = json.dumps({"Resources": list(resources), "Synchronous": True}).encode()
        return self.request("POST", f"/modalities/{modality}/store", body, timeout=timeout)

    def echo(self, modality: str) -> bool:
        """C-ECHO a modality from Orthanc (``POST /modalities/{name}/echo``)."""
        try:
            self.request("POST", f"/modalities/{modality}/echo", b"{}")
        except AssertionError:
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _wait_http(orthanc: Orthanc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if orthanc.process.poll() is not None:
            raise AssertionError(f"Orthanc exited at start:\n{orthanc.log()[-3000:]}")
        try:
            with urllib.request.urlopen(orthanc.url + "/system", timeout=1) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    orthanc.stop()
    raise AssertionError(f"Orthanc did not answer HTTP in {timeout} s:\n{orthanc.log()[-3000:]}")


@pytest.fixture
def make_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Orthanc]]:
    """Factory: ``make_orthanc(modalities={"triage": (AE, host, port)}, aet="ORTHANC")``.

    Keyword arguments: ``modalities`` (name -> (AE title, host, port)), ``aet`` (Orthanc's own
    AE title), ``config`` (extra Orthanc settings merged last), ``start_timeout``. Each Orthanc
    gets free ports and its own storage folder; all are stopped with SIGTERM at teardown.
    """
    from tests.conftest import free_port

    if not Path(ORTHANC_BIN).exists():
        peer_missing(f"Orthanc is not installed at {ORTHANC_BIN} (apt-get install orthanc)")
    started: list[Orthanc] = []

    def make(
        modalities: dict[str, tuple[str, str, int]] | None = None,
        *,
        aet: str = "ORTHANC",
        config: dict[str, Any] | None = None,
        start_timeout: float = 20.0,
    ) -> Orthanc:
        folder = tmp_path_factory.mktemp("orthanc")
        http_port, dicom_port = free_port(), free_port()
        settings: dict[str, Any] = {
            "Name": f"test-{aet}",
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": aet,
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "Plugins": [],
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {
                name: [ae, host, port] for name, (ae, host, port) in (modalities or {}).items()
            },
            # Close an outgoing association right after a push (default: 5 s later), so a
            # peer that queues on release sees the release at once.
            "DicomAssociationCloseDelay": 0,
            "DicomScuTimeout": 30,
            "StableAge": 1,
            "ConcurrentJobs": 1,
            "HttpsVerifyPeers": False,
        }
        settings.update(config or {})
        config_path = folder / "orthanc.json"
        config_path.write_text(json.dumps(settings, indent=2))
        log_path = folder / "orthanc.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [ORTHANC_BIN, str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=folder,
            )
        orthanc = Orthanc(
            process, http_port, dicom_port, aet, folder, log_path, dict(modalities or {})
        )
        started.append(orthanc)
        _wait_http(orthanc, start_timeout)
        return orthanc

    yield make
    for orthanc in started:
        orthanc.stop()
