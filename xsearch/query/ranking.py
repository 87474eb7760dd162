"""Ranking across modalities: calibrated scores, relevance cut-offs, duplicates (``Hit`` lists in, out).

ImageBind's cosine scales differ by modality pair (the released weights train audio at temperature 0.05,
thermal at 0.1, depth and IMU at 0.2): an image query scores unrelated images around 0.35 and the right
sounds around 0.25, so raw cosines cannot be merged or thresholded across targets. The calibrated score of a
hit is a robust z-score: how far its cosine stands above what the same query scores against a fixed random
sample of that modality's stored vectors, in units of that sample's spread,

    calibrated = (cosine - median(sample cosines)) / (1.4826 * MAD(sample cosines)).

It is computed per query and per target, so it adapts to both ends of the pair (the query's modality and
the target's) with no statistics to keep fresh at index time; scoring the 2,048 sampled vectors is a small
part of a search (BENCHMARKS.md, "Warm search against its index"); the sample is read once per store
version. Within
one modality it is a monotone map of the cosine, so each modality's own order is kept; only the merge of
several targets changes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from xsearch.index.faiss_ops import inner_products
from xsearch.paths import is_hidden

SAMPLE_SIZE = 2048  # stored vectors per modality that define "unrelated" for the calibration
MIN_SPREAD = 1e-3  # floor of the robust spread: a tiny or uniform collection must not explode the scores
# The MAD of a handful of cosines is noise (2 items: every hit scores exactly +-0.67; 4 near-equal texts: a
# spread of 0.0003 that makes any text outrank an identical image). Below PRIOR_ITEMS sampled items the
# spread is shrunk toward PRIOR_SPREAD (the released weights score unrelated pairs within about +-0.1 of
# their pair's centre), weighted by the items missing; from PRIOR_ITEMS items on, the sample alone decides.
PRIOR_ITEMS, PRIOR_SPREAD = 8, 0.1
# autocut: a jump is a gap between consecutive scores this many times the median gap and the mean gap
JUMP_OVER_MEDIAN, JUMP_OVER_MEAN = 3.0, 2.0


@dataclass
class Hit:
    """One candidate on its way to a ``Result``: the item, its raw cosine and its calibrated score, and
    the other paths of the same bytes once duplicates are folded."""

    id: int
    score: float
    calibrated: float
    duplicates: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Calibration:
    """One query's baseline against one modality: ``calibrated = (cosine - centre) / spread``."""

    centre: float
    spread: float

    @classmethod
    def from_sample(cls, query: np.ndarray, sample: np.ndarray) -> Calibration:
        if len(sample) == 0:
            return cls(0.0, 1.0)
        cosines = inner_products(sample, query)  # on this thread: searches run side by side
        centre = float(np.median(cosines))
        spread = 1.4826 * float(np.median(np.abs(cosines - centre)))  # MAD, scaled to a normal's sigma
        missing = max(PRIOR_ITEMS - len(cosines), 0)
        if missing:  # too few to stand alone: the spread is shrunk toward the prior's (the median holds up)
            spread = float(np.sqrt((len(cosines) * spread**2 + missing * PRIOR_SPREAD**2) / PRIOR_ITEMS))
        return cls(centre, max(spread, MIN_SPREAD))

    def __call__(self, cosine: float) -> float:
        return (cosine - self.centre) / self.spread


def sample_ids(ids: np.ndarray, size: int = SAMPLE_SIZE) -> np.ndarray:
    """A fixed (seeded) random sample of ``ids``: the same rows for every query while the store is unchanged."""
    ids = np.sort(np.asarray(ids))
    if len(ids) <= size:
        return ids
    return np.sort(np.random.default_rng(0).choice(ids, size=size, replace=False))


def autocut(scores: Sequence[float], jumps: int) -> int:
    """How many of ``scores`` (best first) to keep: everything before the ``jumps``-th jump.

    A jump is a gap between consecutive scores at least 3 times the median gap (large against the usual
    spacing) and 2 times the mean gap (large against the whole list's fall, so that ties and a dense tail
    do not make every small gap a jump); an evenly spaced list has none and is kept whole.
    ``[0.90, 0.89, 0.88, 0.70, 0.69, 0.68]``: ``jumps=1`` keeps 3, ``jumps=2`` keeps all 6 (one jump only).
    Weaviate's autocut has the same purpose; its rule (local maxima of the distance to the straight line
    from the first score to the last) counts every wiggle of a noisy list as a jump.
    """
    if jumps < 1 or len(scores) < 3:
        return len(scores)
    gaps = -np.diff(np.asarray(scores, dtype=np.float64))
    threshold = max(JUMP_OVER_MEDIAN * float(np.median(gaps)), JUMP_OVER_MEAN * float(gaps.mean()), 1e-9)
    found = 0
    for position, gap in enumerate(gaps):
        if gap >= threshold:
            found += 1
            if found == jumps:
                return position + 1
    return len(scores)


def fold_duplicates(
    hits: list[Hit],
    hashes: Mapping[int, str | None],
    paths: Mapping[str, list[tuple[int, str]]],
    preferred: set[int] = frozenset(),
) -> list[Hit]:
    """One hit per distinct sha256 (``hashes``: id -> digest), in the place of the group's first hit, listing
    in ``duplicates`` every other path of the same bytes (``paths``: digest -> ``(id, uri)`` of each row).

    The one that stands for a group is stable, whatever order equal scores came in: a ``preferred`` id (the
    query's own item), else one that looks like the original (``uris``: id -> uri; not in a dot folder, not
    named as a copy), else the first indexed (the lowest id)."""
    uris = {i: uri for rows in paths.values() for i, uri in rows}

    def rank(hit: Hit) -> tuple:
        uri = uris.get(hit.id, "")
        return (hit.id in preferred, not is_hidden(uri), not _named_as_copy(uri), -hit.id)

    standing: dict[str, Hit] = {}
    for hit in hits:
        digest = hashes.get(hit.id)
        if digest is None:
            continue
        best = standing.get(digest)
        if best is None or rank(hit) > rank(best):
            standing[digest] = hit
    kept, seen = [], set()
    for hit in hits:
        digest = hashes.get(hit.id)
        if digest is None:
            kept.append(hit)
        elif digest not in seen:
            seen.add(digest)
            chosen = standing[digest]
            chosen.duplicates = sorted(uri for i, uri in paths.get(digest, []) if i != chosen.id)
            kept.append(chosen)
    return kept


# "beach copy.jpg", "beach copy 2.jpg", "beach (1).jpg", "beach-copy.jpg": how file managers and browsers name
# a second copy of a file.
_COPY = re.compile(r"(?i)([ _-]copy( \d+)?| \(\d+\))$")


def _named_as_copy(uri: str) -> bool:
    stem = os.path.splitext(uri.rsplit("/", 1)[-1])[0]
    return _COPY.search(stem) is not None


def by_date(results: list, newest_first: bool = False) -> list:
    """``results`` in the order they were taken (``metadata["taken"]``), the undated last in their order."""
    dated = sorted((r for r in results if r.metadata.get("taken") is not None), key=lambda r: r.metadata["taken"])
    undated = [r for r in results if r.metadata.get("taken") is None]
    return (dated[::-1] if newest_first else dated) + undated


def lead(hits: list[Hit], leading: set[int], exclude: bool) -> list[Hit]:
    """The ``leading`` hits (the query's own items and their copies) first, in their order, or left out."""
    first = [] if exclude else [h for h in hits if h.id in leading]
    return first + [h for h in hits if h.id not in leading]


def cut(hits: list[Hit], options, by_calibrated: bool, kept: set[int] = frozenset()) -> list[Hit]:
    """The hits that pass ``options``' cut-offs (``min_score``, ``min_calibrated``, ``autocut``); ``autocut``
    reads the score the list is ranked by. The ``kept`` hits (leading the list) are exempt."""
    exempt = [h for h in hits if h.id in kept]
    hits = [h for h in hits if h.id not in kept]
    return exempt + _cut(hits, options, by_calibrated)


def _cut(hits: list[Hit], options, by_calibrated: bool) -> list[Hit]:
    if options.min_score is not None:
        hits = [h for h in hits if h.score >= options.min_score]
    if options.min_calibrated is not None:
        hits = [h for h in hits if h.calibrated >= options.min_calibrated]
    if options.autocut is not None:
        hits = hits[: autocut([h.calibrated if by_calibrated else h.score for h in hits], options.autocut)]
    return hits
