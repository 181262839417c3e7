"""Decoding compressed chest X-rays for the model: the worker's decoder against a full decode.

For each transfer syntax, one 2048x2048 12-bit synthetic radiograph is stored, read back and
turned into the model's input two ways in the same run: the reference (pydicom's full decode,
``worker.preprocess.decode``) and the worker's ``worker.decoders.decode_for_model`` (JPEG 2000
at the coarsest resolution level that still covers the input). Prints the median milliseconds
per image of each (decode + preprocess, one thread), the speed-up, the decode path taken, and
the largest difference in calibrated probability between the two over ``--images`` images
(a random ResNet-50 with spread outputs at ``--size``, or a TorchScript model with --model).

    python benchmarks/decode_throughput.py [--size 224] [--images 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import torch
from _common import load_line, median_ms, radiograph_ds
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGLSLossless

from training.synthetic.phantom import chest_radiograph
from worker.decoders import decode_for_model
from worker.model import build_model
from worker.preprocess import decode, pixel_transform, standardize, to_unit_image


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="model input (default 224)")
    parser.add_argument("--pixels", type=int, default=2048, help="image side (default 2048)")
    parser.add_argument("--images", type=int, default=4, help="images for the probability check")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell")
    parser.add_argument("--model", type=Path, help="TorchScript model (default: random)")
    return parser


def encodings(stored: np.ndarray, folder: Path) -> dict[str, Path]:
    """The image in each transfer syntax, as files."""
    out: dict[str, Path] = {}
    plain = folder / "explicit.dcm"
    radiograph_ds(stored).save_as(plain, enforce_file_format=True)
    out["explicit-le"] = plain
    for name, syntax, kwargs in [
        ("j2k-lossless", JPEG2000Lossless, {}),
        ("j2k-lossy-psnr60", JPEG2000, {"j2k_lossless": False, "j2k_psnr": [60.0]}),
        ("jpeg-ls-lossless", JPEGLSLossless, {}),
    ]:
        ds = radiograph_ds(stored)
        ds.compress(syntax, **kwargs)  # type: ignore[arg-type]
        path = folder / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out[name] = path
    if shutil.which("dcmcjpeg"):
        path = folder / "jpeg-lossless.dcm"
        subprocess.run(["dcmcjpeg", "+e1", str(plain), str(path)], check=True, capture_output=True)
        out["jpeg-lossless-sv1"] = path
    return out


def reference_input(path: Path, size: int) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return standardize(to_unit_image(decode(ds), pixel_transform(ds), size))


def worker_input(path: Path, size: int) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return standardize(to_unit_image(decode_for_model(ds, size).pixels, pixel_transform(ds), size))


def load(model_path: Path | None) -> torch.nn.Module:
    if model_path is not None:
        return torch.jit.load(str(model_path), map_location="cpu").eval()
    torch.manual_seed(0)
    model = build_model().eval()
    with torch.no_grad():
        model.fc.weight.mul_(0.05)  # spread probabilities over (0, 1), not saturated
    return model


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    torch.set_num_threads(1)
    print(load_line())
    model = load(args.model)
    worst: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.images):
            rng = np.random.default_rng(index)
            image = chest_radiograph(rng, (args.pixels, args.pixels), positive=index % 2 == 1)
            stored = np.round(image * 4095)
            folder = Path(tmp) / str(index)
            folder.mkdir()
            files = encodings(stored, folder)
            if index == 0:
                print(f"{'syntax':<20}{'path':>9}{'full ms':>10}{'worker ms':>11}{'speed-up':>10}")
                for name, path in files.items():
                    path_taken = decode_for_model(pydicom.dcmread(path), args.size).path
                    full = median_ms(lambda p=path: reference_input(p, args.size), args.repeats)
                    fast = median_ms(lambda p=path: worker_input(p, args.size), args.repeats)
                    print(
                        f"{name:<20}{path_taken:>9}{full:>10.1f}{fast:>11.1f}{full / fast:>9.1f}x"
                    )
            batch_ref = np.stack([reference_input(p, args.size) for p in files.values()])
            batch_fast = np.stack([worker_input(p, args.size) for p in files.values()])
            with torch.inference_mode():
                ref = torch.sigmoid(model(torch.from_numpy(batch_ref))).reshape(-1).numpy()
                got = torch.sigmoid(model(torch.from_numpy(batch_fast))).reshape(-1).numpy()
            for name, a, b in zip(files, ref, got, strict=True):
                worst[name] = max(worst.get(name, 0.0), float(abs(a - b)))
    print(f"largest |probability difference| to the full decode over {args.images} images:")
    for name, diff in worst.items():
        print(f"  {name:<20}{diff:.2e}")


if __name__ == "__main__":
    main()
