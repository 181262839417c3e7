"""What leaves the system: TID 1500 SR and heatmap exports, and flag notifications.

Imports only ``governance``, ``worker.celery_app`` and ``dicom_gateway.scu`` (never torch).
"""
