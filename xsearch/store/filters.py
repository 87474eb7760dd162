"""Which rows: ``ItemFilter``, the one place in xsearch where filter SQL is written (and quoted), and the
bounds a caller's own predicate must keep."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from xsearch.errors import UsageError
from xsearch.modalities import Modality

# Bounds of a caller's predicate: far above what a person writes (an ``IN (...)`` list takes many values in
# one term), far below what takes Lance's planner down (40,000 OR terms crashed the process).
MAX_FILTER_CHARS = 16_384
MAX_FILTER_TERMS = 256  # AND / OR / NOT
MAX_FILTER_DEPTH = 32  # nested parentheses
_BOOLEAN = re.compile(r"\b(AND|OR|NOT)\b", re.IGNORECASE)


def quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def one_of(column: str, values: Iterable) -> str:
    """``column IN (...)`` of strings or integers (``false`` for none)."""
    values = list(values)
    if not values:
        return "false"
    if isinstance(values[0], str):
        return f"{column} IN ({', '.join(quote(v) for v in values)})"
    return f"{column} IN ({', '.join(str(int(v)) for v in values)})"


def all_of(clauses: Iterable[str | None]) -> str | None:
    clauses = [c for c in clauses if c]
    return " AND ".join(f"({c})" for c in clauses) if clauses else None


def any_of(clauses: Iterable[str]) -> str | None:
    clauses = [c for c in clauses if c]
    return " OR ".join(f"({c})" for c in clauses) if clauses else None


def null_of(sql_type: str) -> str:
    """The expression of a new column of nulls (``Database`` adds columns to older tables)."""
    return f"CAST(NULL AS {sql_type})"


def check_one_expression(where: str) -> None:
    """A caller's predicate must be one bounded expression: parentheses balanced outside quotes and no SQL
    comment (which could hide a parenthesis), so that it cannot close the parentheses it is put in and
    escape the filters around it (``1=1) OR (modality = 'audio'``); and of a bounded size."""

    def refuse(why: str):
        shown = where if len(where) <= 200 else where[:200] + "..."
        raise UsageError(f"bad filter {shown!r}: {why}", argument="where")

    if len(where) > MAX_FILTER_CHARS:
        refuse(f"{len(where):,} characters, more than the {MAX_FILTER_CHARS:,} a filter may have")
    depth, deepest, quoting, outside = 0, 0, None, []
    for i, char in enumerate(where):
        if quoting:
            quoting = None if char == quoting else quoting  # '' inside a string closes and reopens: same result
            continue
        if char in "'\"":
            quoting = char
        elif where.startswith(("--", "/*", "*/"), i) or char == ";":
            refuse("comments and ';' are not allowed in a filter")
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
            if depth < 0:
                break
        outside.append(char if not quoting else " ")
    if depth != 0 or quoting:
        refuse("unbalanced parentheses or quotes")
    if deepest > MAX_FILTER_DEPTH:
        refuse(f"parentheses nested {deepest} deep, more than {MAX_FILTER_DEPTH}")
    terms = len(_BOOLEAN.findall("".join(outside)))
    if terms > MAX_FILTER_TERMS:
        refuse(f"{terms} AND/OR/NOT, more than {MAX_FILTER_TERMS} (a list of values is one term: x IN (...))")


@dataclass(frozen=True)
class ItemFilter:
    """Which rows: every field given must hold (``None`` fields are ignored).

    ``where`` is a caller's own Lance SQL predicate (``"width >= 1024"``), kept in parentheses; everything
    else is built and quoted here, so no other module writes SQL.

    Example
    -------
    >>> ItemFilter(modality=Modality.IMAGE, uris=["it's.jpg"]).sql()
    "(modality = 'image') AND (uri IN ('it''s.jpg'))"
    """

    modality: Modality | None = None
    ids: Sequence[int] | None = None
    uris: Sequence[str] | None = None
    sha256s: Sequence[str] | None = None
    item_ids: Sequence[int] | None = None  # moments of these items (the ``moments`` table's ``item_id``)
    indexed_after: str | None = None  # as returned by ``TableView.last_indexed_at``
    near: tuple[float, float, float] | None = None  # (latitude, longitude, km): a box around the place
    where: str | None = None

    @classmethod
    def item(cls, key: int | str) -> ItemFilter:
        """One stored item named by id (an int), or by uri (a str) as given or made absolute."""
        if isinstance(key, int):
            return cls(ids=[key])
        return cls(uris=sorted({str(key), os.path.abspath(str(key))}))

    def sql(self) -> str | None:
        if self.where is not None:
            check_one_expression(self.where)
        return all_of(
            [
                f"modality = {quote(self.modality)}" if self.modality is not None else None,
                one_of("id", self.ids) if self.ids is not None else None,
                one_of("uri", self.uris) if self.uris is not None else None,
                one_of("sha256", self.sha256s) if self.sha256s is not None else None,
                one_of("item_id", self.item_ids) if self.item_ids is not None else None,
                f"indexed_at > TIMESTAMP {quote(self.indexed_after)}" if self.indexed_after else None,
                _box(*self.near) if self.near is not None else None,
                self.where,
            ]
        )


def filter_problem(message: str) -> str:
    """Lance's error about a filter, as one line about the user's own words: no source paths, no wrapped
    SQL, no internal column list."""
    text = re.sub(r",?\s*/\S+\.rs:\d+:\d+", "", message.splitlines()[0]).replace("Invalid user input: ", "")
    missing = re.search(r"No field named (\S+?)\.?(?: Valid fields|$| Did you mean '(\w+)')", text)
    if missing:
        hint = f"; did you mean '{missing.group(2)}'?" if missing.group(2) else ""
        return f"no column named {missing.group(1)}{hint}"
    parser = re.search(r"sql parser error: (.*?)\)?$", text)
    if parser:
        return f"syntax error: {parser.group(1)}"
    resolving = re.search(r"Error resolving filter expression .*?: (.*)$", text)
    return (resolving.group(1) if resolving else text).strip().rstrip(".,")


KM_PER_DEGREE = 111.195  # of latitude (and of longitude at the equator), on a sphere of the Earth's mean radius


def _box(latitude: float, longitude: float, km: float) -> str:
    """Rows whose place lies in the box of ``km`` around a point (the caller keeps those within ``km``); the
    box wraps at the antimeridian and reaches a pole when the circle does."""
    dlat = km / KM_PER_DEGREE
    south, north = max(latitude - dlat, -90.0), min(latitude + dlat, 90.0)
    cos = math.cos(math.radians(latitude))
    if south == -90.0 or north == 90.0 or cos < 1e-6 or km / (KM_PER_DEGREE * cos) >= 180:
        longitudes = "longitude IS NOT NULL"
    else:
        dlon = km / (KM_PER_DEGREE * cos)
        west, east = longitude - dlon, longitude + dlon
        if west < -180:
            longitudes = f"(longitude >= {west + 360!r} OR longitude <= {east!r})"
        elif east > 180:
            longitudes = f"(longitude >= {west!r} OR longitude <= {east - 360!r})"
        else:
            longitudes = f"longitude BETWEEN {west!r} AND {east!r}"
    return f"latitude BETWEEN {south!r} AND {north!r} AND {longitudes}"
