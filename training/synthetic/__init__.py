"""Synthetic chest radiographs (NON-CLINICAL): phantom, DICOM writer, studies, Kaggle layout.

Imports no torch, so ``cxr-triage synth`` runs on the base install.
"""
