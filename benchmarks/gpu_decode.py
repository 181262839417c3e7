"""JPEG 2000 and lossless JPEG decoded on the GPU (nvImageCodec) against the worker's CPU paths.

For one to ``--images`` 2048x2048 12-bit synthetic radiographs stored as JPEG 2000 lossless,
JPEG 2000 lossy and (with dcmtk's dcmcjpeg) lossless JPEG, prints in one run the median
milliseconds per image (read + decode + preprocess to the model input, one CPU thread) of
pydicom's full decode, the worker's CPU path (reduced JPEG 2000, imagecodecs) and nvImageCodec,
the speed-up of the GPU over the CPU path, the largest |stored value| difference of the GPU
decode to pydicom's and the largest |probability| difference of each path to the full decode
(a random ResNet-50 with spread outputs, or a TorchScript model with --model). Lossless JPEG is
decoded on the GPU here only to check it: the worker sends only JPEG 2000 there
(``worker.decoders.NVIMGCODEC_SYNTAXES``).

Without CUDA or without the ``gpu`` extra it says so in one line and exits 0; ``--backend cpu``
runs the same measurement with nvImageCodec's CPU backend (to check the script, not a figure).

    python benchmarks/gpu_decode.py [--size 224] [--images 2] [--repeats 10] [--backend gpu]
        [--model FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from _common import load_line, median_ms
from decode_throughput import encodings, load, reference_input
from decode_throughput import get_args_parser as throughput_args_parser

import worker.decoders as decoders
from training.synthetic.phantom import chest_radiograph
from worker.preprocess import decode, pixel_transform, standardize, to_unit_image

MEASURED = ("j2k-lossless", "j2k-lossy-psnr60", "jpeg-lossless-sv1")


def get_args_parser() -> argparse.ArgumentParser:
    """decode_throughput.py's arguments (size, pixels, images, repeats, model) and the backend."""
    parser = throughput_args_parser()
    parser.description = __doc__.splitlines()[0]
    parser.set_defaults(images=2, repeats=10)
    parser.add_argument(
        "--backend",
        choices=("gpu", "cpu"),
        default="gpu",
        help="nvImageCodec backend: gpu (the worker's) or cpu (checks the script without a GPU)",
    )
    return parser


def make_decoder(backend: str) -> Any | None:
    """The worker's GPU decoder, or nvImageCodec's CPU-only one; None where neither exists."""
    if backend == "gpu":
        return decoders.gpu_decoder()
    nvimgcodec = decoders._import_nvimgcodec()
    if nvimgcodec is None:
        return None
    return nvimgcodec.Decoder(
        device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY,
        backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)],
    )


def gpu_pixels(ds: pydicom.Dataset, decoder: Any) -> np.ndarray:
    """Stored values through the worker's nvImageCodec glue (any syntax nvImageCodec reads).

    Lossless JPEG headers often carry a sample precision above Bits Stored, which the worker's
    glue refuses; here the raw decode is taken as is, to compare it with pydicom's.
    """
    got = decoders._fast_nvimgcodec(ds, decoder)
    if got is not None:
        return got.pixels
    nvimgcodec = decoders._import_nvimgcodec()
    assert nvimgcodec is not None
    params = nvimgcodec.DecodeParams(
        color_spec=nvimgcodec.ColorSpec.UNCHANGED, allow_any_depth=True
    )
    image = decoder.decode(nvimgcodec.CodeStream(decoders._first_frame(ds)), params=params)
    if image is None:
        raise RuntimeError("nvImageCodec could not decode it")
    return np.asarray(image.cpu()).reshape(int(ds.Rows), int(ds.Columns))


def cpu_input(path: Path, size: int) -> tuple[np.ndarray, str]:
    """The worker's input with the GPU path switched off, and the path taken."""
    ds = pydicom.dcmread(path)
    cached = decoders.gpu_decoder
    decoders.gpu_decoder = lambda: None  # type: ignore[assignment]
    try:
        decoded = decoders.decode_for_model(ds, size)
    finally:
        decoders.gpu_decoder = cached
    return standardize(to_unit_image(decoded.pixels, pixel_transform(ds), size)), decoded.path


def gpu_input(path: Path, size: int, decoder: Any) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return standardize(to_unit_image(gpu_pixels(ds, decoder), pixel_transform(ds), size))


def probabilities(model: torch.nn.Module, inputs: list[np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return torch.sigmoid(model(torch.from_numpy(np.stack(inputs)))).reshape(-1).numpy()


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    decoder = make_decoder(args.backend)
    if decoder is None:
        installed = importlib.util.find_spec("nvidia.nvimgcodec") is not None
        reason = "no CUDA device" if installed else "nvImageCodec missing (the gpu extra)"
        print(f"{reason}: nothing to measure (the CPU paths: benchmarks/decode_throughput.py)")
        return
    torch.set_num_threads(1)
    print(load_line(), f"nvImageCodec backend {args.backend}")
    model = load(args.model)
    worst_px: dict[str, int] = {}
    worst_p: dict[str, tuple[float, float]] = {}
    left_out: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.images):
            rng = np.random.default_rng(index)
            image = chest_radiograph(rng, (args.pixels, args.pixels), positive=index % 2 == 1)
            folder = Path(tmp) / str(index)
            folder.mkdir()
            encoded = encodings(np.round(image * 4095), folder)
            files = {name: encoded[name] for name in MEASURED if name in encoded}
            if index == 0:
                missing = [name for name in MEASURED if name not in files]
                if missing:
                    print(f"not measured (no encoder here): {', '.join(missing)}")
                header = f"{'syntax':<20}{'cpu path':>9}{'full ms':>9}{'cpu ms':>8}{'gpu ms':>8}"
                print(f"{header}{'gpu/cpu':>9}{'gpu/full':>10}")
                for name, path in files.items():
                    try:
                        gpu_input(path, args.size, decoder)  # warm-up: the decoder's resources
                    except RuntimeError as exc:
                        print(f"{name:<20} left out: {exc}")
                        left_out.add(name)
                        continue
                    gpu = median_ms(partial(gpu_input, path, args.size, decoder), args.repeats)
                    full = median_ms(partial(reference_input, path, args.size), args.repeats)
                    cpu = median_ms(partial(cpu_input, path, args.size), args.repeats)
                    label = cpu_input(path, args.size)[1]
                    print(
                        f"{name:<20}{label:>9}{full:>9.1f}{cpu:>8.1f}{gpu:>8.1f}"
                        f"{cpu / gpu:>8.2f}x{full / gpu:>9.2f}x"
                    )
            files = {name: path for name, path in files.items() if name not in left_out}
            full_inputs, cpu_inputs, gpu_inputs = [], [], []
            for name, path in files.items():
                ds = pydicom.dcmread(path)
                diff = np.abs(
                    gpu_pixels(ds, decoder).astype(np.int64) - decode(ds).astype(np.int64)
                )
                worst_px[name] = max(worst_px.get(name, 0), int(diff.max()))
                full_inputs.append(reference_input(path, args.size))
                cpu_inputs.append(cpu_input(path, args.size)[0])
                gpu_inputs.append(gpu_input(path, args.size, decoder))
            ref = probabilities(model, full_inputs)
            cpu_p, gpu_p = probabilities(model, cpu_inputs), probabilities(model, gpu_inputs)
            for name, a, b, c in zip(files, ref, cpu_p, gpu_p, strict=True):
                previous = worst_p.get(name, (0.0, 0.0))
                worst_p[name] = (max(previous[0], abs(a - b)), max(previous[1], abs(a - c)))
    print(f"largest differences to pydicom's full decode over {args.images} images:")
    print(f"  {'syntax':<20}{'gpu |pixel|':>12}{'cpu |p|':>10}{'gpu |p|':>10}")
    for name, pixel in worst_px.items():
        cpu_diff, gpu_diff = worst_p[name]
        print(f"  {name:<20}{pixel:>12}{cpu_diff:>10.2e}{gpu_diff:>10.2e}")


if __name__ == "__main__":
    main()
