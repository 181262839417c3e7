"""Result destinations, read from the TOML file that ``CXR_RESULTS_CONFIG`` names.

Example (docs/deploy.md has the whole story)::

    [dicom.pacs]                 # a DICOM peer that gets the report (C-STORE)
    ae_title = "ORTHANC"
    host = "pacs.example.org"
    port = 4242
    send = ["sr"]                # add "heatmap" for the Grad-CAM Secondary Capture (opt-in)
    sr = "comprehensive3d"       # or "comprehensive" for a PACS without Comprehensive 3D SR

    [webhook.ris]                # a signed JSON POST on each flag change
    url = "https://ris.example.org/hooks/triage"
    secret = "at least 16 characters"
    include_accession = false    # the accession number is PHI: only when the site opts in

    [hl7.ris]                    # HL7 v2 ORU^R01 over MLLP on each flag change
    host = "ris.example.org"
    port = 2575

A wrong file gives one :class:`~governance.errors.ConfigError` line naming the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from governance.errors import ConfigError
from governance.models import DeliveryKind

MAX_CONFIG_BYTES = 1_000_000
SR_CLASSES = ("comprehensive3d", "comprehensive")
_AE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _-.+")


@dataclass(frozen=True, slots=True)
class DicomDestination:
    name: str
    ae_title: str
    host: str
    port: int
    send: tuple[str, ...] = (DeliveryKind.SR,)
    sr: str = "comprehensive3d"
    calling_ae: str | None = None


@dataclass(frozen=True, slots=True)
class WebhookSink:
    name: str
    url: str
    secret: str = field(repr=False)
    include_accession: bool = False


@dataclass(frozen=True, slots=True)
class Hl7Sink:
    name: str
    host: str
    port: int
    receiving_application: str = "RIS"
    receiving_facility: str = ""
    include_accession: bool = False


@dataclass(frozen=True, slots=True)
class ResultsConfig:
    dicom: tuple[DicomDestination, ...] = ()
    webhooks: tuple[WebhookSink, ...] = ()
    hl7: tuple[Hl7Sink, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.dicom or self.webhooks or self.hl7)

    def names(self) -> list[str]:
        return (
            [d.name for d in self.dicom]
            + [w.name for w in self.webhooks]
            + [h.name for h in self.hl7]
        )


def load(path: Path | None) -> ResultsConfig:
    """Read and check the destinations file; an empty config when ``path`` is None."""
    if path is None:
        return ResultsConfig()
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"CXR_RESULTS_CONFIG {path} is {size} bytes; at most 1 MB")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"CXR_RESULTS_CONFIG names {path}, which does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"CXR_RESULTS_CONFIG {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"CXR_RESULTS_CONFIG {path} is not valid TOML: {exc}") from None
    return parse(data, where=str(path))


def parse(data: dict[str, Any], *, where: str = "results config") -> ResultsConfig:
    unknown = set(data) - {"dicom", "webhook", "hl7"}
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}; use dicom, webhook, hl7")
    dicom = tuple(_dicom(name, v, where) for name, v in _section(data, "dicom", where))
    webhooks = tuple(_webhook(name, v, where) for name, v in _section(data, "webhook", where))
    hl7 = tuple(_hl7(name, v, where) for name, v in _section(data, "hl7", where))
    config = ResultsConfig(dicom, webhooks, hl7)
    names = config.names()
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{where}: destination names must be unique: {duplicates}")
    return config


def _section(data: dict[str, Any], key: str, where: str) -> list[tuple[str, dict[str, Any]]]:
    section = data.get(key, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: [{key}] must be a table of named destinations")
    out = []
    for name, value in section.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{key}.{name}] must be a table")
        if not name or len(name) > 64:
            raise ConfigError(f"{where}: destination name {name!r} must be 1-64 characters")
        out.append((name, value))
    return out


def _keys(value: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(value) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(allowed)}")


def _port(value: Any, where: str) -> int:
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{where}: port must be an integer 1-65535, got {value!r}")
    return value


def _text(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {what} must be a non-empty string")
    return value.strip()


def _ae(value: Any, where: str, what: str) -> str:
    title = _text(value, where, what)
    if len(title) > 16 or not set(title) <= _AE_CHARS:
        raise ConfigError(f"{where}: {what} {value!r} is not a valid AE title (1-16 characters)")
    return title


def _dicom(name: str, value: dict[str, Any], where: str) -> DicomDestination:
    at = f"{where} [dicom.{name}]"
    _keys(value, {"ae_title", "host", "port", "send", "sr", "calling_ae"}, at)
    send = value.get("send", [DeliveryKind.SR])
    if not isinstance(send, list) or not send or not set(send) <= set(DeliveryKind.DICOM):
        raise ConfigError(f"{at}: send must be a list of {list(DeliveryKind.DICOM)}")
    sr = value.get("sr", "comprehensive3d")
    if sr not in SR_CLASSES:
        raise ConfigError(f"{at}: sr must be one of {list(SR_CLASSES)}, got {sr!r}")
    calling = value.get("calling_ae")
    return DicomDestination(
        name=name,
        ae_title=_ae(value.get("ae_title"), at, "ae_title"),
        host=_text(value.get("host"), at, "host"),
        port=_port(value.get("port"), at),
        send=tuple(dict.fromkeys(send)),
        sr=sr,
        calling_ae=_ae(calling, at, "calling_ae") if calling is not None else None,
    )


def _webhook(name: str, value: dict[str, Any], where: str) -> WebhookSink:
    at = f"{where} [webhook.{name}]"
    _keys(value, {"url", "secret", "include_accession"}, at)
    url = _text(value.get("url"), at, "url")
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError(f"{at}: url must be an http:// or https:// URL, got {url!r}")
    secret = _text(value.get("secret"), at, "secret")
    if len(secret) < 16:
        raise ConfigError(f"{at}: secret must be at least 16 characters")
    include = value.get("include_accession", False)
    if not isinstance(include, bool):
        raise ConfigError(f"{at}: include_accession must be true or false")
    return WebhookSink(name, url, secret, include)


def _hl7(name: str, value: dict[str, Any], where: str) -> Hl7Sink:
    at = f"{where} [hl7.{name}]"
    _keys(
        value,
        {"host", "port", "receiving_application", "receiving_facility", "include_accession"},
        at,
    )
    include = value.get("include_accession", False)
    if not isinstance(include, bool):
        raise ConfigError(f"{at}: include_accession must be true or false")
    return Hl7Sink(
        name=name,
        host=_text(value.get("host"), at, "host"),
        port=_port(value.get("port"), at),
        receiving_application=str(value.get("receiving_application", "RIS"))[:180],
        receiving_facility=str(value.get("receiving_facility", ""))[:180],
        include_accession=include,
    )
