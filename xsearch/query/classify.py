"""Zero-shot labels: each stored item's best text label (ImageBind's emergent classification)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from xsearch.errors import UsageError
from xsearch.modalities import Modality
from xsearch.store import ItemFilter, embeddings_to_numpy

LOGIT_SCALE = 100.0  # cosine x 100 before the softmax, as CLIP does
COLUMNS = ["id", "uri", "modality", "label", "score"]


def clean_labels(labels: Sequence[str]) -> list[str]:
    labels = [label.strip() for label in labels if label.strip()]
    if len(labels) < 2:
        raise UsageError("classify needs at least two labels", argument="labels")
    return labels


def classify(
    store, label_vectors: np.ndarray, labels: Sequence[str], targets: Sequence[Modality], where: str | None = None
) -> pa.Table:
    """An Arrow table ``id, uri, modality, label, score`` sorted by id: each item's most likely label and
    its probability (softmax over the labels of cosine x 100)."""
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
        return pa.table({name: [] for name in COLUMNS})
    return pa.concat_tables(tables).sort_by("id")
