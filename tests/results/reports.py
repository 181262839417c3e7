"""Reading back the TID 1500 report that ``results.sr`` writes, as the types highdicom returns.

highdicom's hints are wider than what it returns for such a report: ``_SR.content`` is a
``ContentSequence`` (a ``MeasurementReport`` for TID 1500) and ``QualitativeEvaluation.value`` is
``int | float`` (the coded answer, a ``CodedConcept``). These helpers check the narrower type.
"""

from __future__ import annotations

import highdicom as hd


def measurement_report(content: hd.sr.ContentSequence) -> hd.sr.MeasurementReport:
    """An SR document's content, which must be a TID 1500 Measurement Report."""
    assert isinstance(content, hd.sr.MeasurementReport), type(content)
    return content


def coded_value(evaluation: hd.sr.QualitativeEvaluation) -> hd.sr.CodedConcept:
    """The coded answer of a qualitative evaluation."""
    value = evaluation.value
    assert isinstance(value, hd.sr.CodedConcept), type(value)
    return value
