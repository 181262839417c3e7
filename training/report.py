"""A run's artifacts: metrics JSON, predictions, figures, error sheet and a one-page report.

``report.html`` is self-contained apart from the PNG files beside it. The operating-point
table shows each tau chosen on validation and what it gives on test, frozen.
"""

from __future__ import annotations

import csv
import html
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from governance.policies import flag_mask
from training import plots
from training.export import SUMMARY_FILE, json_safe
from training.finalize import Finalized
from training.thresholds import POLICY_CRITERIA

logger = logging.getLogger(__name__)

FIGURES = (
    "roc.png",
    "pr.png",
    "calibration.png",
    "cm_val.png",
    "cm_test.png",
    "learning_curves.png",
    "errors.png",
)
TABLE_METRICS = ("sensitivity", "specificity", "precision", "f1", "accuracy")


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(json_safe(value), indent=2, sort_keys=False) + "\n")
    return path


def write_predictions(
    path: Path, names: Sequence[str], labels: np.ndarray, raw_logits: np.ndarray, probs: np.ndarray
) -> Path:
    """One row per image: name, label, raw logit (before shifts), served probability."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "label", "raw_logit", "probability"])
        for row in zip(names, labels.tolist(), raw_logits.tolist(), probs.tolist(), strict=True):
            writer.writerow([row[0], row[1], repr(float(row[2])), repr(float(row[3]))])
    return path


def error_examples(
    labels: np.ndarray, probs: np.ndarray, tau: float, k: int
) -> tuple[list[int], list[int]]:
    """Indices of the ``k`` most confident false positives and false negatives at ``tau``."""
    flagged = flag_mask(probs, tau)
    fp = np.flatnonzero(flagged & (labels == 0))
    fn = np.flatnonzero(~flagged & (labels == 1))
    return (
        fp[np.argsort(-probs[fp], kind="mergesort")][:k].tolist(),
        fn[np.argsort(probs[fn], kind="mergesort")][:k].tolist(),
    )


def write_figures(
    run_dir: Path,
    final: Finalized,
    history: Sequence[dict[str, float]],
    test_images: np.ndarray | None,
    test_names: Sequence[str],
    k_errors: int = 12,
) -> list[dict[str, Any]]:
    """Every figure of the run; returns the error-analysis rows (also in ``errors.csv``)."""
    splits = {"val": (final.val.labels, final.val.probs)}
    calib = {"val": (final.val.labels, final.val.raw_probs, _at_val_prevalence(final, "val"))}
    if final.test is not None:
        splits["test"] = (final.test.labels, final.test.probs)
        calib["test"] = (final.test.labels, final.test.raw_probs, _at_val_prevalence(final, "test"))
    taus = {name: point.tau for name, point in final.operating_points.items()}
    plots.roc_figure(run_dir / "roc.png", splits, taus)
    plots.pr_figure(run_dir / "pr.png", splits)
    plots.calibration_figure(run_dir / "calibration.png", calib)
    balanced = POLICY_CRITERIA["balanced"]
    plots.confusion_figure(
        run_dir / "cm_val.png",
        final.val_metrics["operating_points"][balanced]["confusion"],
        f"validation, tau {taus[balanced]:.3f} ({balanced})",
    )
    test_cm = (
        final.test_metrics["operating_points"][balanced]["confusion"]
        if final.test_metrics
        else {"tn": 0, "fp": 0, "fn": 0, "tp": 0}
    )
    plots.confusion_figure(
        run_dir / "cm_test.png", test_cm, f"test, tau {taus[balanced]:.3f} frozen ({balanced})"
    )
    plots.learning_curves_figure(run_dir / "learning_curves.png", history)
    rows: list[dict[str, Any]] = []
    thumbs, captions = [], []
    if final.test is not None and test_images is not None:
        fps, fns = error_examples(final.test.labels, final.test.probs, taus[balanced], k_errors)
        for kind, indices in (("false positive", fps), ("false negative", fns)):
            for i in indices:
                rows.append(
                    {
                        "kind": kind,
                        "name": test_names[i],
                        "label": int(final.test.labels[i]),
                        "probability": float(final.test.probs[i]),
                    }
                )
                thumbs.append(np.asarray(test_images[i]))
                short = "FP" if kind == "false positive" else "FN"
                captions.append(
                    f"{short} p={final.test.probs[i]:.3f}\n{Path(test_names[i]).name[:22]}"
                )
    plots.error_sheet(
        run_dir / "errors.png",
        thumbs,
        captions,
        f"Most confident errors on test at tau {taus[balanced]:.3f} ({balanced})",
    )
    with open(run_dir / "errors.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["kind", "name", "label", "probability"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _at_val_prevalence(final: Finalized, split: str) -> np.ndarray:
    from training.calibration import probabilities

    scores = final.val if split == "val" else final.test
    assert scores is not None
    offset = final.calibration["pos_weight_offset"]
    return probabilities(scores.raw_logits + offset, final.temperature)


def _fmt(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    value, ci = entry["value"], entry.get("ci95") or [None, None]
    if value != value:  # NaN
        return "n/a"
    if ci[0] is None or ci[0] != ci[0]:
        return f"{value:.3f}"
    return f"{value:.3f} <small>[{ci[0]:.3f}, {ci[1]:.3f}]</small>"


def write_html(run_dir: Path, summary: dict[str, Any], warnings: Sequence[str]) -> Path:
    """The one-page report: data, training, calibration, operating points, figures."""
    e = html.escape
    data = summary.get("data", {})
    counts = data.get("counts", {})
    val_m = summary["val_metrics"]
    test_m = summary.get("test_metrics") or {}
    parts = [f"<h1>Pneumonia triage model {e(summary['version'])}</h1>"]
    parts += [f"<p class='warn'>{e(w)}</p>" for w in warnings]
    parts.append(
        "<h2>Data</h2><table><tr><th>split</th><th>images</th><th>normal</th>"
        "<th>pneumonia</th></tr>"
    )
    for split, c in counts.items():
        parts.append(
            f"<tr><td>{split}</td><td>{c['total']}</td><td>{c['normal']}</td>"
            f"<td>{c['pneumonia']}</td></tr>"
        )
    parts.append("</table>")
    parts.append(
        f"<p>Source: {e(str(data.get('source')))} {e(str(data.get('root') or ''))}. "
        f"Exact duplicates dropped: {data.get('duplicates_dropped', 0)}. "
        f"Split manifest SHA-256: <code>{e(summary.get('split_manifest_sha256', ''))}"
        "</code>.</p>"
    )
    args = summary.get("training_args", {})
    parts.append(
        f"<h2>Training</h2><p>ResNet-50, input {summary['input_size']} px, "
        f"{'pretrained from ' + e(str(args.get('pretrained'))) if args.get('pretrained') else 'random initialisation'}; "  # noqa: E501
        f"pos_weight {summary['calibration']['pos_weight']:.3f}; best epoch "
        f"{summary.get('best_epoch')} of {len(summary.get('history', []))}. "
        f"TorchScript vs eager max |&Delta;p| = "
        f"{summary['export_check']['max_abs_probability_diff']:.2e}.</p>"
    )
    calib = summary["calibration"]
    parts.append(
        f"<h2>Calibration</h2><p>Temperature T = {calib['temperature']:.4f} "
        "(fitted on validation by NLL)"
        + (
            f"; prior shift to deployment prevalence "
            f"{calib['deployment_prevalence']:.3f} (logit offset "
            f"{calib['prior_shift_offset']:+.3f})"
            if calib.get("deployment_prevalence")
            else ""
        )
        + ".</p><table><tr><th></th><th>NLL</th><th>Brier</th>"
        "<th>ECE</th></tr>"
    )
    for split in ("val", "test"):
        if split in calib:
            c = calib[split]
            parts.append(
                f"<tr><td>{split} before / after</td>"
                f"<td>{c['nll_before']:.4f} / {c['nll_after']:.4f}</td>"
                f"<td>{c['brier_before']:.4f} / {c['brier_after']:.4f}</td>"
                f"<td>{c['ece_before']:.4f} / {c['ece_after']:.4f}</td></tr>"
            )
    parts.append("</table>")
    parts.append(
        "<h2>Operating points</h2><p>Chosen on validation, frozen for test "
        "(flag when probability &ge; tau). Policy names: triage = target "
        "sensitivity, balanced = Youden's J, precision = target specificity.</p>"
        "<table><tr><th>point</th><th>criterion</th><th>tau</th><th>split</th>"
        + "".join(f"<th>{m}</th>" for m in TABLE_METRICS)
        + "</tr>"
    )
    policy_names = {criterion: policy for policy, criterion in POLICY_CRITERIA.items()}
    for name, point in summary["operating_points"].items():
        label = f"{name} ({policy_names[name]})" if name in policy_names else name
        for split, block in (("val", val_m), ("test", test_m)):
            entry = (block.get("operating_points") or {}).get(name)
            if not entry:
                continue
            parts.append(
                f"<tr><td>{label}</td><td>{e(point['criterion'])}</td>"
                f"<td>{point['tau']:.4f}</td><td>{split}</td>"
                + "".join(f"<td>{_fmt(entry.get(m))}</td>" for m in TABLE_METRICS)
                + "</tr>"
            )
    parts.append(
        "</table><h2>Overall (95% bootstrap intervals)</h2><table><tr><th>split</th>"
        "<th>AUC</th><th>AP</th><th>Brier</th><th>ECE</th></tr>"
    )
    for split, block in (("val", val_m), ("test", test_m)):
        overall = block.get("overall")
        if overall:
            parts.append(
                f"<tr><td>{split}</td>"
                + "".join(f"<td>{_fmt(overall.get(m))}</td>" for m in ("auc", "ap", "brier", "ece"))
                + "</tr>"
            )
    parts.append("</table>")
    subgroups = summary.get("subgroups") or {}
    if subgroups:
        parts.append(
            "<h2>Subgroups (test)</h2><table><tr><th>attribute</th><th>value</th>"
            "<th>n</th><th>positives</th><th>AUC</th></tr>"
        )
        for attribute, values in subgroups.items():
            for value, m in values.items():
                auc = m.get("auc")
                parts.append(
                    f"<tr><td>{e(attribute)}</td><td>{e(value)}</td><td>{m['n']}</td>"
                    f"<td>{m['positives']}</td><td>"
                    f"{'n/a' if auc is None or auc != auc else f'{auc:.3f}'}"
                    "</td></tr>"
                )
        parts.append("</table>")
    parts.append(
        "<h2>Figures</h2>"
        + "".join(
            f"<figure><img src='{name}' alt='{name}'><figcaption>{name}</figcaption></figure>"
            for name in FIGURES
        )
    )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:1em auto}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:2px 6px;font-size:13px}.warn{background:#fff3cd;padding:6px}"
        "img{max-width:520px}figure{display:inline-block;margin:4px}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(summary['version'])}"
        f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    path = run_dir / "report.html"
    path.write_text(page)
    return path


def write_artifacts(
    run_dir: Path,
    summary: dict[str, Any],
    final: Finalized,
    data: Any,
    val_idx: np.ndarray,
    test_idx: np.ndarray,
    warnings: list[str],
) -> None:
    """Every JSON, CSV, figure and the HTML report of a finished run."""
    names = data.names
    write_json(run_dir / "train_history.json", summary["history"])
    write_json(
        run_dir / "best_val.json",
        {
            "best_epoch": summary["best_epoch"],
            "val_metrics": summary["val_metrics"],
            "operating_points": summary["operating_points"],
            "temperature": summary["temperature"],
        },
    )
    write_json(
        run_dir / "test_metrics.json",
        {
            "test_metrics": summary["test_metrics"],
            "subgroups": summary["subgroups"],
            "operating_points": summary["operating_points"],
        },
    )
    write_predictions(
        run_dir / "predictions_val.csv",
        [names[i] for i in val_idx],
        final.val.labels,
        final.val.raw_logits,
        final.val.probs,
    )
    test_images = None
    if final.test is not None:
        write_predictions(
            run_dir / "predictions_test.csv",
            [names[i] for i in test_idx],
            final.test.labels,
            final.test.raw_logits,
            final.test.probs,
        )
        test_images = data.images[test_idx]
    errors = write_figures(
        run_dir, final, summary["history"], test_images, [names[i] for i in test_idx]
    )
    summary["error_examples"] = errors
    write_json(run_dir / SUMMARY_FILE, summary)
    path = write_html(run_dir, summary, warnings)
    logger.info("run folder: %s (report: %s)", run_dir, path.name)
