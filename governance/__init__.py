"""The store: engine and sessions, ORM models, audit trail, model registry, threshold policies.

Imports nothing of ours but :mod:`cxr_triage.settings`.
"""
