"""Column types that behave the same on SQLite and PostgreSQL.

Why: SQLite has no time zones and PostgreSQL has native enums that make migrations awkward.
Timestamps are stored as UTC and always come back time-zone aware; enums are stored as short
strings (no native type) and come back as the Python enum.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC; naive values are refused so no local time sneaks in."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use a time-zone aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, time-zone aware, in UTC."""
    return datetime.now(UTC)


def enum_column_type(enum_cls: type[enum.Enum], length: int = 16) -> sa.Enum:
    """A portable enum: VARCHAR holding the member *values*, no native type, no CHECK constraint."""
    return sa.Enum(
        enum_cls,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


def json_type() -> Any:
    """JSON on SQLite, JSONB on PostgreSQL (indexable, compact)."""
    from sqlalchemy.dialects.postgresql import JSONB

    return sa.JSON().with_variant(JSONB(), "postgresql")
