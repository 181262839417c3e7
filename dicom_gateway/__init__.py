"""The DICOM gateway: a pynetdicom SCP that receives chest radiographs from a PACS.

C-ECHO and C-STORE in, a durable spool file and a store row per instance, and one Celery
message per study once the study is complete. Imports only :mod:`governance` and
:mod:`worker.celery_app` of ours, never torch.
"""
