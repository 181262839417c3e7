"""One trained run, shared by the training tests (session-scoped: it costs a minute or two).

``cxr-triage train`` on the ``kaggle_dir`` fixture (synthetic JPEGs in the Kaggle layout) at
64 px on the CPU, registered in a SQLite store of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cxr_triage.settings import Settings
from training.pipeline import RunResult, train
from training.train import get_args_parser

TRAIN_ARGS = [
    "--input-size", "64", "--epochs", "6", "--batch-size", "16", "--workers", "0",
    "--bootstrap", "200", "--no-progress", "--val-fraction", "0.2", "--random-init",
    "--augment", "light",  # small synthetic images: the published crops would hide the finding
    # One thread: on a CPU shared with other jobs, two spinning OpenMP threads per step are
    # many times slower than one.
    "--threads", "1",
]  # fmt: skip


@dataclass
class TrainedRun:
    result: RunResult
    settings: Settings
    data: Path

    @property
    def run_dir(self) -> Path:
        return self.result.run_dir


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Train on one CPU thread: on a CPU shared with other jobs (CI runners, other test
    processes), two spinning OpenMP threads per step are several times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_store_settings(root: Path) -> Settings:
    from migrations import upgrade

    url = f"sqlite:///{root / 'store.db'}"
    upgrade(url)
    return Settings(_env_file=None, data_dir=root / "data", database_url=url)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, kaggle_dir: Path) -> TrainedRun:
    root = tmp_path_factory.mktemp("trained-run")
    settings = make_store_settings(root)
    threads = torch.get_num_threads()
    try:
        args = get_args_parser().parse_args(
            ["--data", str(kaggle_dir), "--output-dir", str(root / "run"), *TRAIN_ARGS]
        )
        result = train(args, settings)
    finally:
        torch.set_num_threads(threads)
    return TrainedRun(result, settings, kaggle_dir)
