"""Offline training: data, splits, transforms, training loop, evaluation, thresholds,
calibration, reports, TorchScript export and registration; synthetic radiographs; the demo model.

Training shares :mod:`worker.preprocess` and :func:`worker.model.build_model` with serving, so a
model scores a DICOM file in production exactly as it was evaluated.
"""
