"""Cursor pages: newest first, `after` names the last object of the previous page."""

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from api.errors import ApiError

Row = TypeVar("Row")


def newest_first(
    session: Session,
    query: Select[Any],
    after_row: Any | None,
    keys: Sequence[InstrumentedAttribute[Any]],
    limit: int,
) -> tuple[list[Any], bool]:
    """One page of query ordered by keys descending, strictly after after_row; (rows, has_more)."""
    if after_row is not None:
        query = query.where(_before(after_row, keys))
    rows = list(session.scalars(query.order_by(*(k.desc() for k in keys)).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def _before(row: Any, keys: Sequence[InstrumentedAttribute[Any]]) -> ColumnElement[bool]:
    """Rows that sort after row in descending (keys) order: a lexicographic tuple compare."""
    first, rest = keys[0], keys[1:]
    value = getattr(row, first.key)
    if not rest:
        return first < value
    return or_(first < value, and_(first == value, _before(row, rest)))


def cursor_row(find: Callable[[str], Row | None], after: str | None) -> Row | None:
    """The object named by `after`, or 400 when it is not one of the caller's."""
    if after is None:
        return None
    row = find(after)
    if row is None:
        raise ApiError(400, f"after: no such object {after!r} in this list", param="after")
    return row
