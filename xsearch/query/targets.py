"""What a search ranks: whole files (``items``) or their segments (``moments``).

The engine runs one search loop for both; a target is the small policy that differs: which table of the
snapshot it reads, which rows count (a moment whose file's row is gone or holds other bytes is never
returned), what makes two hits the same bytes, how many hits one file may give, and how a hit becomes a
``Result``.
"""

from __future__ import annotations

from xsearch.errors import StoreError
from xsearch.modalities import Modality
from xsearch.query.algebra import QueryInput
from xsearch.query.ranking import Hit
from xsearch.query.results import METADATA_COLUMNS, Result

RESULT_COLUMNS = ["uri", "modality", "sha256", "size", "mtime", *METADATA_COLUMNS]
MOMENT_COLUMNS = ["item_id", "uri", "modality", "sha256", "start", "end"]


class ItemTarget:
    """Whole files: one row of ``items`` a hit."""

    digest_columns: tuple[str, ...] = ("sha256", "modality")

    def state(self, snapshot):
        return snapshot.items

    def own(self, inputs: list[QueryInput]) -> set[int]:
        """The query's own stored items (added, not subtracted): they and their copies lead, or are left out."""
        return {i.item_id for i in inputs if i.item_id is not None and i.term.weight > 0}

    def searched(self, modalities: list[Modality], state) -> list[Modality]:
        """Of the modalities asked for, those searched."""
        return modalities

    def fetch(self, k: int, options) -> int:
        return k

    def rows(self, snapshot, ids: list[int]) -> dict[int, dict]:
        """``{id: row}`` of the hits whose row is there (an index damaged in a way its checks missed may
        name one that is gone)."""
        return snapshot.items.view.rows(ids, RESULT_COLUMNS)

    def digest(self, row: dict) -> str | None:
        """The same bytes read as the same modality (a thermal scan is not folded into its copy read as a
        photo: they answer different queries)."""
        return f"{row['sha256']}|{row['modality']}" if row["sha256"] else None

    def leading(self, own: set[int], rows: dict[int, dict]) -> set[int]:
        """``own`` and the rows holding the same bytes (sha256) as one of them."""
        digests = {rows[i]["sha256"] for i in own if i in rows and rows[i]["sha256"]}
        return set(own) | {i for i, row in rows.items() if row["sha256"] in digests}

    def per_file(self, hits: list[Hit], rows: dict[int, dict], options, kept: set[int]) -> list[Hit]:
        return hits

    def result(self, rank: int, hit: Hit, row: dict) -> Result:
        metadata = {key: row[key] for key in METADATA_COLUMNS if row[key] is not None}
        modality = Modality(row["modality"])
        found = Result(rank, hit.score, hit.id, row["uri"], modality, metadata, hit.calibrated, hit.duplicates)
        found.indexed = (row["size"], row["mtime"])
        return found


class MomentTarget(ItemTarget):
    """Segments of audio and video: one row of ``moments`` a hit, at most ``per_file`` (default 1) a file."""

    digest_columns = ("sha256", "modality", "start")

    def state(self, snapshot):
        if snapshot.moments is None:
            raise StoreError(f"{snapshot.items.view.path}: no moments indexed here (run xsearch index --moments)")
        return snapshot.moments

    def own(self, inputs: list[QueryInput]) -> set[int]:
        return {i.moment_id for i in inputs if i.moment_id is not None and i.term.weight > 0}

    def searched(self, modalities: list[Modality], state) -> list[Modality]:
        """Only those the moments table holds (images have no moments)."""
        held = state.view.modalities()
        return [m for m in modalities if m in held]

    def fetch(self, k: int, options) -> int:
        return k * (options.per_file or 1)

    def rows(self, snapshot, ids: list[int]) -> dict[int, dict]:
        """``{id: row}`` of the moments whose file's row is there and holds the bytes they were cut from,
        each with that row as ``item``."""
        moments = snapshot.moments.view.rows(ids, MOMENT_COLUMNS)
        items = snapshot.items.view.rows(sorted({r["item_id"] for r in moments.values()}), RESULT_COLUMNS)
        current = {}
        for i, row in moments.items():
            item = items.get(row["item_id"])
            if item is not None and item["sha256"] == row["sha256"]:
                current[i] = {**row, "item": item}
        return current

    def digest(self, row: dict) -> str | None:
        """The same seconds of the same bytes."""
        return f"{row['sha256']}|{row['modality']}|{row['start']:g}" if row["sha256"] else None

    def leading(self, own: set[int], rows: dict[int, dict]) -> set[int]:
        return own & set(rows)

    def per_file(self, hits: list[Hit], rows: dict[int, dict], options, kept: set[int]) -> list[Hit]:
        """At most ``per_file`` hits of each file (the ``kept`` ones apart), in order."""
        limit, counts, out = options.per_file or 1, {}, []
        for hit in hits:
            owner = rows[hit.id]["item_id"]
            if hit.id not in kept:
                if counts.get(owner, 0) >= limit:
                    continue
                counts[owner] = counts.get(owner, 0) + 1
            out.append(hit)
        return out

    def result(self, rank: int, hit: Hit, row: dict) -> Result:
        """The file's id, uri and metadata, the moment's modality and seconds."""
        whole = super().result(rank, hit, {**row["item"], "uri": row["uri"], "modality": row["modality"]})
        whole.id, whole.start, whole.end = row["item_id"], row["start"], row["end"]
        return whole


ITEMS_TARGET, MOMENTS_TARGET = ItemTarget(), MomentTarget()
