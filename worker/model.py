"""The model: one constructor shared by training and serving, and the verified loader.

The network is torchvision's ResNet-50 with ``fc`` replaced by a single logit (pneumonia).
Serving loads a TorchScript file only after its SHA-256 matches the registry and the
preprocessing it carries (extra file ``preprocessing.json``) is the one this code implements.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models

from governance.errors import ConfigError, ModelIntegrityError
from worker.preprocess import PREPROCESSING_FILE, check_preprocessing, preprocessing_record

logger = logging.getLogger(__name__)

#: The largest model file read into memory (a ResNet-50 in TorchScript is about 100 MB).
MAX_MODEL_BYTES = 2 * 1024**3

ARCHITECTURES = ("resnet50",)


def build_model(architecture: str = "resnet50", pretrained: str | Path | None = None) -> nn.Module:
    """A ResNet-50 with one output logit.

    Parameters
    ----------
    architecture
        Only ``resnet50``.
    pretrained
        A local file of ImageNet weights for torchvision's ResNet-50 (a state_dict, e.g.
        ``resnet50-11ad3fa6.pth``). They cannot be downloaded on machines without internet,
        and training from random initialisation is a poor substitute on real radiographs.

    Raises
    ------
    ValueError
        ``architecture`` is not supported.
    ConfigError
        ``pretrained`` is given but missing or not a ResNet-50 state_dict.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    model = models.resnet50(weights=None)
    if pretrained is not None:
        path = Path(pretrained)
        if not path.is_file():
            raise ConfigError(
                f"pretrained weights {path} not found: download torchvision's ResNet-50 ImageNet "
                "weights on a machine with internet and pass the local file"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a bad file
            raise ConfigError(f"pretrained weights {path} cannot be read: {exc}") from None
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("fc.")]:
            raise ConfigError(f"{path} is not a torchvision ResNet-50 state_dict")
        logger.info("loaded ImageNet weights from %s", path)
    model.fc = nn.Linear(model.fc.in_features, 1)
    return model


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when there is one; asking for CUDA without one is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CXR_DEVICE=cuda but no CUDA device is available")
    if device not in {"cpu", "cuda"}:
        raise ConfigError(f"CXR_DEVICE must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def load_scripted(
    path: str | Path, sha256: str, device: torch.device, input_size: int
) -> torch.jit.ScriptModule:
    """Load a TorchScript model after checking its SHA-256 against the registry's and its
    preprocessing record against this code's.

    The file is read once into memory, hashed, and loaded from those same bytes: a file swapped
    between the check and the load cannot be run.

    Raises
    ------
    ModelIntegrityError
        The file is too large or unreadable, the checksum differs, or the model was made with
        another preprocessing (one line naming the difference).
    """
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise ModelIntegrityError(
                f"model file {file} is {size} bytes, more than {MAX_MODEL_BYTES}; refusing it"
            )
        data = file.read_bytes()
    except OSError as exc:
        raise ModelIntegrityError(f"model file {file} cannot be read: {exc.strerror}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ModelIntegrityError(
            f"model file {file} has SHA-256 {actual[:12]}..., registered {sha256[:12]}...; "
            "refusing to load it"
        )
    extra = {PREPROCESSING_FILE: ""}
    module = torch.jit.load(io.BytesIO(data), map_location=device, _extra_files=extra)
    try:
        check_preprocessing(read_record(extra[PREPROCESSING_FILE]), input_size)
    except ModelIntegrityError as exc:
        raise ModelIntegrityError(f"{file.name}: {exc}") from None
    module.eval()
    return module


def read_record(text: str | bytes) -> dict[str, Any] | None:
    """The preprocessing record of a TorchScript extra file (None when absent or unreadable)."""
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def preprocessing_of(path: str | Path) -> dict[str, Any] | None:
    """The preprocessing record a TorchScript file carries, without checking it."""
    extra = {PREPROCESSING_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return read_record(extra[PREPROCESSING_FILE])


def export_torchscript(model: nn.Module, input_size: int, path: str | Path) -> Path:
    """Trace ``model`` (eval mode, fp32, CPU) and save it for serving with its preprocessing
    record; returns the path.

    The file is not frozen: the loader moves it to its device, memory format and precision
    first and freezes it there (frozen weights become constants that ``.to()`` cannot move).
    """
    model = model.eval().to("cpu", dtype=torch.float32)
    example = torch.zeros(1, 3, input_size, input_size)
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = json.dumps(preprocessing_record(input_size), sort_keys=True)
    traced.save(str(out), _extra_files={PREPROCESSING_FILE: record})
    return out
