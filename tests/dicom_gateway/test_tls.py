"""DICOM over TLS: the gateway with a server certificate and, optionally, client certificates."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from cxr_triage.settings import Settings
from dicom_gateway import status
from dicom_gateway.scp import Gateway
from governance.errors import ConfigError
from tests.dicom_gateway.rawsend import raw_instance, send_raw
from tests.fuzzing import radiograph

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(folder: Path, name: str, ca: str) -> None:
    """A key and a certificate for ``name`` (localhost, 127.0.0.1) signed by the CA ``ca``."""
    _openssl(
        "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=folder
    )
    _openssl(
        "req",
        "-new",
        "-key",
        f"{name}.key",
        "-subj",
        f"/CN={name}",
        "-out",
        f"{name}.csr",
        cwd=folder,
    )
    (folder / f"{name}.ext").write_text(
        # What Python 3.13's default X.509 checks (VERIFY_X509_STRICT) ask of a certificate.
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-sha256",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.crt",
        cwd=folder,
    )


def _ca(folder: Path, name: str) -> None:
    _openssl(
        "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=folder
    )
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        f"{name}.key",
        "-subj",
        f"/CN={name}",
        "-days",
        "1",
        "-sha256",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        f"{name}.crt",
        cwd=folder,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A site CA, the gateway's certificate, a client signed by the CA and one that is not."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "ca")
    _ca(folder, "rogue")
    _issue(folder, "server", "ca")
    _issue(folder, "good", "ca")
    _issue(folder, "bad", "rogue")
    files = {"ca": folder / "ca.crt"}
    for name in ("server", "good", "bad"):
        files[f"{name}_cert"], files[f"{name}_key"] = folder / f"{name}.crt", folder / f"{name}.key"
    return files


def _client(pki: dict[str, Path], client: str | None) -> tuple[ssl.SSLContext, str]:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"]))
    if client is not None:
        context.load_cert_chain(pki[f"{client}_cert"], pki[f"{client}_key"])
    return context, "localhost"


def test_tls_with_client_certificates_admits_only_a_certificate_of_the_site_ca(
    pki: dict[str, Path],
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
) -> None:
    settings = make_settings(
        dicom_tls_cert=pki["server_cert"], dicom_tls_key=pki["server_key"], dicom_tls_ca=pki["ca"]
    )
    start_gateway(settings)
    port = settings.dicom_port
    ds = radiograph(study_uid=generate_uid())
    # A peer that opens a connection and never starts the handshake blocks nobody.
    stalled = socket.create_connection(("127.0.0.1", port))
    try:
        assert send_raw("127.0.0.1", port, [raw_instance(ds)], tls=_client(pki, "good")) == [
            status.SUCCESS
        ]
        for client in ("bad", None):
            with pytest.raises(AssertionError, match="not accepted"):
                send_raw("127.0.0.1", port, [raw_instance(ds)], tls=_client(pki, client), timeout=5)
        with pytest.raises(AssertionError, match="not accepted"):
            send_raw("127.0.0.1", port, [raw_instance(ds)], timeout=5)  # no TLS at all
    finally:
        stalled.close()


def test_tls_without_a_ca_accepts_any_client_over_tls(
    pki: dict[str, Path],
    make_settings: Callable[..., Settings],
    start_gateway: Callable[..., Gateway],
) -> None:
    settings = make_settings(dicom_tls_cert=pki["server_cert"], dicom_tls_key=pki["server_key"])
    start_gateway(settings)
    ds = radiograph(study_uid=generate_uid())

    statuses = send_raw(
        "127.0.0.1", settings.dicom_port, [raw_instance(ds)], tls=_client(pki, None)
    )

    assert statuses == [status.SUCCESS]


def test_unreadable_tls_files_are_a_config_error(
    tmp_path: Path, pki: dict[str, Path], make_settings: Callable[..., Settings]
) -> None:
    from dicom_gateway.scp import make_ssl_context

    settings = make_settings(
        dicom_tls_cert=tmp_path / "missing.crt", dicom_tls_key=pki["server_key"]
    )
    with pytest.raises(ConfigError, match="CXR_DICOM_TLS"):
        make_ssl_context(settings)
    with pytest.raises(ValueError, match="set together"):
        make_settings(dicom_tls_cert=pki["server_cert"])
