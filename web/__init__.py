"""The web server: radiologist worklist, study pages, JSON API, Prometheus metrics and health.

Imports ``governance`` and ``worker.celery_app`` only (never torch). Build the application with
:func:`web.app.create_app`; ``cxr-triage web`` (:mod:`web.main`) serves it with uvicorn.
"""
