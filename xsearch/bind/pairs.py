"""The pairs file of ``xsearch bind``: a CSV with a header and, per line, a file of the new modality and its
anchor (a file of the anchor modality, or a text), and optionally its class in a ``label`` column.

Relative paths are read against the CSV's own folder, so a dataset folder with its pairs file can move.
Everything wrong with the file is one ``UsageError`` naming it, the line and the reason, before any model
loads or anything is written.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from xsearch.errors import UsageError

MIN_PAIRS = 16  # fewer cannot hold out enough pairs to say whether the adapter learned anything
SHOWN = 3  # missing files named in one message


@dataclass(frozen=True)
class Pair:
    source: str  # the new modality's file
    anchor: str  # a file of the anchor modality, or the text itself
    label: str | None
    line: int


def read_pairs(path: str | os.PathLike, anchor_is_text: bool) -> list[Pair]:
    """The pairs listed in ``path``, their files checked to exist."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such pairs file", argument="pairs")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"{path}: not a readable CSV ({exc})", argument="pairs") from None
    rows = [(i, row) for i, row in enumerate(rows, start=1) if any(cell.strip() for cell in row)]
    if not rows:
        raise UsageError(f"{path}: empty (expected a header, then one pair a line)", argument="pairs")
    (_, header), body = rows[0], rows[1:]
    header = [cell.strip().lower() for cell in header]
    if len(header) not in (2, 3) or (len(header) == 3 and header[2] != "label"):
        raise UsageError(
            f"{path}: expected a header of two columns (the new modality's file, its anchor) and optionally "
            f"'label', got {', '.join(header) or 'nothing'}",
            argument="pairs",
        )
    pairs = []
    for line, row in body:
        if len(row) != len(header):
            raise UsageError(f"{path}, line {line}: {len(row)} columns, the header has {len(header)}", argument="pairs")
        source, anchor = row[0].strip(), row[1].strip()
        label = row[2].strip() if len(header) == 3 else None
        if not source or not anchor or (label is not None and not label):
            raise UsageError(f"{path}, line {line}: an empty column", argument="pairs")
        source = _resolved(source, path.parent)
        pairs.append(Pair(source, anchor if anchor_is_text else _resolved(anchor, path.parent), label, line))
    if len(pairs) < MIN_PAIRS:
        raise UsageError(f"{path}: {len(pairs)} pairs; binding needs at least {MIN_PAIRS}", argument="pairs")
    _check_files(path, pairs, anchor_is_text)
    return pairs


def _resolved(name: str, folder: Path) -> str:
    name = os.path.expanduser(name)
    return os.path.abspath(name if os.path.isabs(name) else folder / name)


def _check_files(path: Path, pairs: list[Pair], anchor_is_text: bool) -> None:
    missing = [(p.line, p.source) for p in pairs if not os.path.isfile(p.source)]
    if not anchor_is_text:
        missing += [(p.line, p.anchor) for p in pairs if not os.path.isfile(p.anchor)]
    if missing:
        missing.sort()
        shown = ", ".join(f"{name} (line {line})" for line, name in missing[:SHOWN])
        more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        raise UsageError(f"{path}: {len(missing)} listed files are missing: {shown}{more}", argument="pairs")
