"""The heatmap: Grad-CAM in the worker, the Secondary Capture in results (dciodvfy clean), and
only for destinations that ask for it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from governance import deliveries
from governance.db import Store
from governance.models import DeliveryKind, ResultDelivery, TriageEvent
from results import config as results_config
from results.delivery import ResultsContext, targets
from results.heatmap import CAPTION, build_heatmap_for, burn_caption
from tests.results.test_sr import DCIODVFY
from tests.results.triaged import triaged_study


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet-50 with random weights, exported as the worker's models are (64 px)."""
    import torch

    from worker.model import build_model, export_torchscript

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "random.pt"
    return export_torchscript(build_model(), 64, path)


def test_grad_cam_and_colorize(random_model: Path) -> None:
    import torch

    from worker.saliency import colorize, grad_cam

    module = torch.jit.load(str(random_model)).eval()
    tensor = np.random.default_rng(1).standard_normal((3, 64, 64)).astype(np.float32)
    cam = grad_cam(module, tensor)
    assert cam.shape == (64, 64) and cam.dtype == np.float32
    assert cam.min() == 0.0 and cam.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="tensor"):
        grad_cam(module, tensor[0])
    gray = np.full((2, 2), 0.5)
    rgb = colorize(gray, np.array([[0.0, 1.0], [0.0, 0.0]]))
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (128, 128, 128)  # a cold map leaves the radiograph as it is
    assert rgb[0, 1, 0] > rgb[0, 1, 2]  # hot is red


def test_heatmap_secondary_capture_from_the_worker_arrays(
    random_model: Path, make_settings, make_database_url, result_studies, tmp_path: Path
) -> None:
    from worker.saliency import compute_study_heatmap

    url = make_database_url("sqlite")
    settings = make_settings(database_url=url, heatmaps=True)
    store = Store.from_url(url)
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "random.pt").write_bytes(random_model.read_bytes())
    triaged = triaged_study(store, result_studies[0], spool, probability=0.7, version="random")
    npz = compute_study_heatmap(store, settings, triaged.study_instance_uid)
    assert npz is not None and npz == settings.heatmap_file(triaged.study_instance_uid, "random")
    assert npz.with_suffix(".png").is_file()
    with np.load(npz) as arrays:
        assert arrays["overlay"].shape == (512, 512, 3)
        assert str(arrays["sop_instance_uid"]) == triaged.frontal_uid

    config_path = tmp_path / "results.toml"
    config_path.write_text(
        '[dicom.plain]\nae_title = "A"\nhost = "h"\nport = 104\n'
        '[dicom.heat]\nae_title = "B"\nhost = "h"\nport = 104\nsend = ["sr", "heatmap"]\n'
    )
    ctx = ResultsContext(settings, store, results_config.load(config_path))

    def plan(session):  # type: ignore[no-untyped-def]
        event = session.get(TriageEvent, triaged.event_id)
        wanted = targets(ctx.config, event, 3)
        assert sorted((t.destination, t.kind) for t in wanted) == [
            ("heat", "heatmap"),
            ("heat", "sr"),
            ("plain", "sr"),
        ]  # off unless the destination asks
        return deliveries.plan(session, event, wanted)

    store.run(plan)
    with store.read() as session:
        row = next(r for r in deliveries.list_deliveries(session) if r.kind == DeliveryKind.HEATMAP)
        session.expunge(row)
    assert isinstance(row, ResultDelivery)
    sc = build_heatmap_for(ctx, row)
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    checked = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True)
    assert not [line for line in checked.stderr.splitlines() if line.startswith("Error")]
    ds = pydicom.dcmread(path)
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.BurnedInAnnotation == "YES"
    assert ds.StudyInstanceUID == triaged.study_instance_uid
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == triaged.frontal_uid
    assert ds.PhotometricInterpretation == "RGB" and ds.Columns == 512 and ds.Rows > 512
    band = ds.pixel_array[512:]
    assert band.max() > 200 and np.median(band) == 0  # white caption on a black band
    store.dispose()


def test_caption_is_burned_in() -> None:
    rgb = np.zeros((100, 200, 3), np.uint8)
    out = burn_caption(rgb, f"{CAPTION} | score 0.830 | tau 0.500")
    assert out.shape[0] > 100 and out[100:].max() > 200 and out[:100].max() == 0
    with pytest.raises(ValueError, match="rgb"):
        burn_caption(np.zeros((4, 4), np.uint8), "x")
