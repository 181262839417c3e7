"""The audit trail: the append-only hash chain (``chain``), questions to it (``query``), proof
that it was not altered (``verify``), and its export to an IHE ATNA syslog receiver (``atna``
formats, ``export`` sends).

``from governance import audit; audit.record(...)`` writes an event; the chain's names are
re-exported here so that callers need not know the module layout.
"""

from governance.audit.chain import (
    AUDIT_LOCK_KEY,
    CODE_MEANINGS,
    EVENT_CODES,
    TRIAGE_ACTIONS,
    Action,
    ExportSink,
    Outcome,
    event_fields,
    is_phi_key,
    pseudonym,
    record,
    record_audit_use,
    set_export_sink,
)

__all__ = [
    "AUDIT_LOCK_KEY",
    "CODE_MEANINGS",
    "EVENT_CODES",
    "TRIAGE_ACTIONS",
    "Action",
    "ExportSink",
    "Outcome",
    "event_fields",
    "is_phi_key",
    "pseudonym",
    "record",
    "record_audit_use",
    "set_export_sink",
]
