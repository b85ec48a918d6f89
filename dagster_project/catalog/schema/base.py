"""What every table of the catalog shares: the declarative ``Base`` with its naming convention,
``StandardColumns`` (UUID key, creation and update times), timezone-aware UTC times, JSON and enum
column types, and the common CHECK constraints."""

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "JSONType", "NAMING_CONVENTION", "StandardColumns", "UTCDateTime", "enum_type", "night_check",
           "ra_dec_checks", "utcnow"]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """``timestamptz`` that always reads back as an aware UTC datetime.

    SQLite has no time zones: values are stored as UTC wall time and re-tagged on
    read. Naive datetimes are refused rather than guessed at.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the catalog stores only timezone-aware times")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def enum_type(enum_cls: type[enum.Enum], name: str) -> sa.Enum:
    """Stores the enum's values (not member names): native type on PostgreSQL, CHECK on SQLite."""
    return sa.Enum(enum_cls, name=name, values_callable=lambda e: [m.value for m in e],
                   create_constraint=True, validate_strings=True)


def ra_dec_checks() -> tuple[sa.CheckConstraint, sa.CheckConstraint]:
    return (sa.CheckConstraint("ra >= 0 AND ra < 360", name="ra_range"),
            sa.CheckConstraint("dec >= -90 AND dec <= 90", name="dec_range"))


def night_check() -> sa.CheckConstraint:
    return sa.CheckConstraint("night LIKE '____-__-__'", name="night_format")


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}


class StandardColumns:
    """UUID key and creation / update times, on every table."""

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid(), primary_key=True, default=uuid.uuid4, sort_order=-1)
    # Python defaults give aware microsecond times to ORM writes; server defaults cover raw SQL.
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=sa.func.now(), sort_order=1)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow, server_default=sa.func.now(),
                                                 sort_order=1)
