"""Domain errors. Messages carry UIDs and paths only, never patient identifiers."""

from __future__ import annotations


class TriageError(Exception):
    """Base of every cxr-triage domain error; its message is meant for a person."""


class StoreUnavailable(TriageError):
    """The store cannot be reached or stayed busy: a transient fault, worth retrying."""


class StoreRejected(TriageError):
    """The store refused a write for good (a value too long, a constraint): not worth retrying."""


class InstanceConflict(TriageError):
    """A SOP Instance UID that is already stored under another study."""


class NotFound(TriageError):
    """A study, model version or policy that was asked for does not exist."""


class NoActiveModel(TriageError):
    """No model version is active, or the active one has no threshold policy."""


class ModelIntegrityError(TriageError):
    """A model file is missing or its SHA-256 does not match what was registered."""


class ConfigError(TriageError):
    """A setting, path or URL is wrong; the message says which and what to do."""


class SchemaOutOfDate(ConfigError):
    """The store's schema is not at the revision this code needs."""
