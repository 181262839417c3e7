"""The triage worker: Celery app and tasks, DICOM pixel preprocessing, model and inference.

``worker.celery_app`` imports no torch, so the gateway and the web may import it.
"""
