"""Zero-shot labels: each stored item's best text label (ImageBind's emergent classification)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from xsearch.errors import UsageError
from xsearch.modalities import Modality
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

    def __repr__(self) -> str:
        return f"Labels({len(self)} items)"

    def to_arrow(self) -> pa.Table:
        return self._table

    def to_pandas(self):
        return self._table.to_pandas()

    def as_json(self) -> list[dict]:
        return [asdict(label) for label in self]


def clean_labels(labels: Sequence[str]) -> list[str]:
    labels = [label.strip() for label in labels if label.strip()]
    if len(labels) < 2:
        raise UsageError("classify needs at least two labels", argument="labels")
    return labels


def classify(
    store, label_vectors: np.ndarray, labels: Sequence[str], targets: Sequence[Modality], where: str | None = None
) -> Labels:
    """Each item's most likely label and its probability (softmax over the labels of cosine x 100), sorted
    by id."""
    tables = []
    for modality in targets:
        table = store.scan(["id", "uri", "modality", "embedding"], ItemFilter(modality=modality, where=where))
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
