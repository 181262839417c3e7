"""cxr-triage: chest X-ray pneumonia triage beside a PACS (research software, assistive only)."""

__version__ = "0.1.0"
