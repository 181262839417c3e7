"""Inference throughput of the worker's ResNet-50, side by side with plain eager PyTorch.

Prints images/s (median of several timed runs) for each variant and batch size, the ratio to
eager fp32 (the reference a straightforward implementation would use), the largest probability
difference to fp32 on the same batch, and the preprocessing cost of a 2048x2048 12-bit DICOM
file (decode + the shared preprocess), so it shows whether the model or the pixels are the bound.

    python benchmarks/inference_throughput.py [--size 224] [--batches 1 8 32] [--repeats 5]

Weights are random (no ImageNet weights offline); speed does not depend on them, and the
probability difference is measured on a model whose outputs are spread (fc rescaled).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from worker.inference import (
    ModelSpec,
    _prepare,
    cpu_has_native_bf16,
    load_model,
    predict_logits,
)
from worker.model import build_model, export_torchscript


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="input size (default 224)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (allocations, oneDNN primitive cache, cudnn autotune)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def spread_model() -> torch.nn.Module:
    """A random ResNet-50 whose probabilities are spread over (0, 1), not saturated."""
    torch.manual_seed(0)
    model = build_model().eval()
    with torch.no_grad():
        model.fc.weight.mul_(0.05)
    return model


def preprocessing_ms(repeats: int) -> dict[str, float]:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

    from worker.preprocess import preprocess

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:2048, 0:2048]
    pixels = 2048 + 1500 * np.sin(x / 97) * np.cos(y / 131) + rng.normal(0, 40, (2048, 2048))
    pixels = np.clip(pixels, 0, 4095).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CR", 2048, 2048, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    ds.PixelData = pixels.tobytes()
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.dcm"
        ds.save_as(plain, enforce_file_format=True)
        j2k = Path(tmp) / "j2k.dcm"
        ds.compress(JPEG2000Lossless)
        ds.save_as(j2k, enforce_file_format=True)
        for name, path in (("explicit LE", plain), ("JPEG 2000 lossless", j2k)):
            out[f"read + decode ({name})"] = 1000 * timed(
                lambda p=path: pydicom.dcmread(p).pixel_array, repeats
            )  # type: ignore[misc]
            out[f"read + preprocess to 224 ({name})"] = 1000 * timed(
                lambda p=path: preprocess(pydicom.dcmread(p), 224), repeats
            )  # type: ignore[misc]
    return out


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"native bf16 on CPU: {cpu_has_native_bf16()}"
    )
    eager = spread_model().to(device)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_torchscript(eager, args.size, Path(tmp) / "m.pt")
        from governance.registry import sha256_file

        spec = ModelSpec("bench", str(path), sha256_file(path), args.size)
        scripted = torch.jit.load(str(path), map_location=device).eval()
        low = (
            torch.bfloat16
            if device.type == "cpu" or torch.cuda.is_bf16_supported()
            else torch.float16
        )
        variants: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], torch.dtype, bool]] = {
            "eager fp32 (reference)": (eager, torch.float32, False),
            "eager fp32 channels_last": (
                eager.to(memory_format=torch.channels_last),
                torch.float32,
                True,
            ),
            "TorchScript frozen fp32 CL": (
                _prepare(scripted, device, torch.float32),
                torch.float32,
                True,
            ),
            f"TorchScript frozen {str(low)[6:]} CL": (
                _prepare(torch.jit.load(str(path), map_location=device), device, low),
                low,
                True,
            ),
        }
        chosen = load_model(spec, device=device.type, precision="auto")
        rows = []
        batch0 = torch.randn(
            max(args.batches), 3, args.size, args.size, generator=torch.Generator().manual_seed(1)
        ).to(device)
        with torch.inference_mode():
            reference = torch.sigmoid(eager(batch0[:8]).float()).cpu()
        for name, (module, dtype, channels_last) in variants.items():
            for bs in args.batches:
                x = batch0[:bs].to(dtype)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)

                def run(
                    m: Callable[[torch.Tensor], torch.Tensor] = module, t: torch.Tensor = x
                ) -> torch.Tensor:
                    with torch.inference_mode():
                        return m(t)

                seconds = timed(run, args.repeats)
                rows.append((name, bs, bs / seconds))
            with torch.inference_mode():
                x8 = batch0[:8].to(dtype)
                if channels_last:
                    x8 = x8.contiguous(memory_format=torch.channels_last)
                probs = torch.sigmoid(module(x8).float()).cpu()
            rows.append((name, -1, float((probs - reference).abs().max())))
        for bs in args.batches:
            batch = batch0[:bs].cpu().numpy()
            seconds = timed(lambda b=batch: predict_logits(chosen, b), args.repeats)
            rows.append((f"worker ({chosen.precision}, chosen at load)", bs, bs / seconds))

    reference_ips = {
        bs: ips for name, bs, ips in rows if name.startswith("eager fp32 (") and bs > 0
    }
    print(
        f"\nResNet-50 at {args.size}x{args.size}: images/s (median of {args.repeats}); "
        "ratio to eager fp32"
    )
    header = f"{'variant':<40}" + "".join(f"{'bs ' + str(b):>18}" for b in args.batches)
    print(header + f"{'max |dp| vs fp32':>20}")
    names = list(dict.fromkeys(name for name, _, _ in rows))
    for name in names:
        cells = []
        for bs in args.batches:
            ips = next((v for n, b, v in rows if n == name and b == bs), None)
            cells.append(f"{ips:8.1f} ({ips / reference_ips[bs]:4.2f}x)" if ips else "")
        diff = next((v for n, b, v in rows if n == name and b == -1), None)
        print(
            f"{name:<40}"
            + "".join(f"{c:>18}" for c in cells)
            + (f"{diff:>20.2e}" if diff is not None else "")
        )

    print("\nPreprocessing one 2048x2048 12-bit CR file (ms, median):")
    for name, ms in preprocessing_ms(args.repeats).items():
        print(f"  {name:<48} {ms:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
