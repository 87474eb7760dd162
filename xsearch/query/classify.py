"""Labels for stored items: zero-shot from label texts (ImageBind's emergent classification), or few-shot
from a few example files per label (the ImageBind paper's few-shot audio and depth results).

Each label has a prototype vector (its text's embedding, or the mean of its examples' unit vectors, blended
with its text's by ``text_weight``); an item's label is the prototype it is nearest to, with the softmax
over the labels of cosine x 100 as its probability.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from xsearch.errors import QueryError, UsageError
from xsearch.modalities import Modality
from xsearch.options import LABEL_SORTS, Selection
from xsearch.paths import glob_mask
from xsearch.store import ItemFilter, embeddings_to_numpy

LOGIT_SCALE = 100.0  # cosine x 100 before the softmax, as CLIP does
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("uri", pa.string()),
        ("modality", pa.string()),
        ("label", pa.string()),
        ("score", pa.float32()),
    ]
)


@dataclass(frozen=True)
class Label:
    id: int
    uri: str
    modality: Modality
    label: str
    score: float  # the label's probability (softmax over the labels)


class Labels:
    """Each item's best label, sorted by id: iterate for ``Label`` rows; ``to_arrow()``, ``to_pandas()``,
    ``as_json()`` like ``Results``."""

    def __init__(self, table: pa.Table):
        self._table = table

    def __len__(self) -> int:
        return self._table.num_rows

    def __iter__(self) -> Iterator[Label]:
        for row in self._table.to_pylist():
            yield Label(row["id"], row["uri"], Modality(row["modality"]), row["label"], row["score"])

    @property
    def rows(self) -> list[Label]:
        """The ``Label`` rows, as a list."""
        return list(self)

    def __repr__(self) -> str:
        return f"Labels({len(self)} items)"

    def to_arrow(self) -> pa.Table:
        return self._table

    def to_pandas(self):
        return self._table.to_pandas()

    def as_json(self) -> list[dict]:
        return [asdict(label) for label in self]

    def filtered(self, min_confidence: float | None) -> Labels:
        """Only the items whose label has at least this probability."""
        if min_confidence is None:
            return self
        return Labels(self._table.filter(pa.compute.greater_equal(self._table["score"], min_confidence)))

    def sorted(self, by: str = "id") -> Labels:
        """By item id, or by ``"score"`` (most confident first), as ``ClassifyOptions.sort`` says."""
        if by not in LABEL_SORTS:
            raise UsageError(f"sort by 'id' or 'score', not {by!r}", argument="sort")
        return Labels(self._table.sort_by("id" if by == "id" else [("score", "descending"), ("id", "ascending")]))


def clean_labels(labels: Sequence[str]) -> list[str]:
    labels = [label.strip() for label in labels if label.strip()]
    if len(labels) < 2:
        raise UsageError("classify needs at least two labels", argument="labels")
    return labels


def prototypes(examples: Mapping[str, np.ndarray], texts: Mapping[str, np.ndarray] | None, text_weight: float):
    """``[labels, dim]`` unit prototypes: the normalised mean of each label's example unit vectors, plus
    ``text_weight`` times its text's unit vector when ``texts`` are given, re-normalised."""

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    out = []
    for label, vectors in examples.items():
        prototype = unit(unit(np.asarray(vectors, dtype=np.float64)).mean(axis=0))
        if texts is not None and text_weight:
            prototype = unit(prototype + text_weight * unit(np.asarray(texts[label], dtype=np.float64)))
        out.append(prototype)
    return np.stack(out).astype(np.float32)


def example_files(examples: str | os.PathLike | Mapping[str, Sequence]) -> dict[str, list[str]]:
    """``{label: [files]}`` from a mapping, or from a folder whose subfolders are the labels."""
    if isinstance(examples, Mapping):
        found = {str(label): [os.fspath(f) for f in files] for label, files in examples.items()}
    else:
        root = Path(examples)
        if not root.is_dir():
            raise UsageError(f"{root}: no such folder of examples", argument="examples")
        found = {
            folder.name: sorted(str(f) for f in folder.rglob("*") if f.is_file() and not f.name.startswith("."))
            for folder in sorted(root.iterdir())
            if folder.is_dir()
        }
    empty = [label for label, files in found.items() if not files]
    if len(found) < 2 or empty:
        why = f"labels without example files: {', '.join(empty)}" if empty else "at least two labels are needed"
        where = "" if isinstance(examples, Mapping) else f" in {os.fspath(examples)}"
        raise UsageError(f"examples{where}: {why}", argument="examples")
    return found


def example_prototypes(embed, encoder, examples, text_weight: float = 0.0) -> tuple[list[str], np.ndarray]:
    """Label names and prototypes from example files, embedded by ``embed`` (``Collection.embed``: each
    file's modality by the index's rules, a folder as the files ``index`` would take from it) and label
    texts by ``encoder``."""
    files = example_files(examples)
    vectors = {}
    for label, paths in files.items():
        embedded = embed(paths)
        failed = [r.message for r in embedded if r.error is not None]
        if failed:
            raise QueryError(f"example for label {label!r}: {failed[0]}")
        vectors[label] = np.stack([r.embedding for r in embedded])
    names = list(files)
    texts = None
    if text_weight:
        texts = dict(zip(names, encoder.encode_text([n.replace("_", " ") for n in names]).numpy()))
    return names, prototypes(vectors, texts, text_weight)


def classify(
    items,
    label_vectors: np.ndarray,
    labels: Sequence[str],
    targets: Sequence[Modality],
    selection: Selection,
) -> Labels:
    """Each item's most likely label and its probability (softmax over the labels of cosine x 100), sorted
    by id; of the ``targets``, the items ``selection``'s ``where`` and ``path`` select, as in a search."""
    tables = []
    for modality in targets:
        scanned = ItemFilter(modality=modality, where=selection.where)
        table = items.scan(["id", "uri", "modality", "embedding"], scanned)
        if selection.path is not None and table.num_rows:
            table = table.filter(pa.array(glob_mask(table["uri"], selection.path)))
        if table.num_rows == 0:
            continue
        logits = embeddings_to_numpy(table["embedding"]) @ np.asarray(label_vectors).T * LOGIT_SCALE
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        best = probs.argmax(axis=1)
        tables.append(
            pa.table(
                {
                    "id": table["id"],
                    "uri": table["uri"],
                    "modality": table["modality"],
                    "label": pa.array([labels[i] for i in best], pa.string()),
                    "score": pa.array(probs[np.arange(len(best)), best], pa.float32()),
                }
            )
        )
    if not tables:
        return Labels(SCHEMA.empty_table())
    return Labels(pa.concat_tables(tables).sort_by("id"))
