"""Worker fixtures: a small TorchScript ResNet-50 registered and activated in a store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from governance.db import Store
from governance.models import ModelVersion
from governance.policies import set_policy
from governance.registry import activate_model, register_model
from worker.model import build_model, export_torchscript

INPUT_SIZE = 32


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised ResNet-50 (one logit) exported as TorchScript at 32 px."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "resnet50-32px.pt"
    return export_torchscript(build_model(), INPUT_SIZE, path)


@pytest.fixture
def activate(store: Store, model_file: Path) -> Callable[..., ModelVersion]:
    """Register ``model_file`` as a version with a policy at ``tau`` and make it active."""

    def make(version: str = "test-v1", tau: float = 0.5, temperature: float = 1.0) -> ModelVersion:
        def work(session):  # type: ignore[no-untyped-def]
            model = register_model(
                session,
                version=version,
                path=model_file,
                input_size=INPUT_SIZE,
                temperature=temperature,
            )
            set_policy(
                session,
                model,
                operating_point="balanced",
                tau=tau,
                rationale="test policy",
                approved_by="pytest",
            )
            return activate_model(session, version, actor="pytest")

        return store.run(work)

    return make
