"""Rows as plain values: a dataclass filled from a row, and the newest row a table keeps for a
model version. (A row's columns as a dict: :meth:`governance.models.Base.columns`.)

What the JSON API, the audit answers and the listings show of a row is mostly its attributes
under their own names; these helpers say that once instead of copying attribute by attribute.
"""

from __future__ import annotations

from dataclasses import Field, fields
from typing import Any, ClassVar, Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from governance.models import DriftBaseline, RecalibrationJob


class _Dataclass(Protocol):
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]


Record = TypeVar("Record", bound=_Dataclass)

#: The tables that keep rows per model version, each with its creation time.
Row = TypeVar("Row", DriftBaseline, RecalibrationJob)


def from_attributes(cls: type[Record], source: object, **values: Any) -> Record:
    """An instance of the dataclass ``cls``: ``values`` for the fields they name, and for every
    other field the attribute of ``source`` with the field's name."""
    taken = {f.name: getattr(source, f.name) for f in fields(cls) if f.name not in values}
    return cls(**taken, **values)


def newest(session: Session, table: type[Row], model_version_id: int) -> Row | None:
    """The row of ``table`` for the model version created last (the higher id of a tie)."""
    return session.scalar(
        select(table)
        .where(table.model_version_id == model_version_id)
        .order_by(table.created_at.desc(), table.id.desc())
        .limit(1)
    )
