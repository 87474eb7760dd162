"""What the tables hold: their Arrow schemas, the records written to them, and the conversions between the
two. Plain Lance tables, readable with ``lancedb``, ``pyarrow`` or pandas without xsearch:

- ``items``: one row per indexed file: stable ``id``, ``uri``, ``modality``, ``sha256``, ``size``, ``mtime``,
  ``model_id``, ``embedding`` (``fixed_size_list<float32, 1024>``), ``indexed_at`` and optional metadata
  (``width``, ``height``, ``duration``, ``sample_rate``, ``thumbnail``, ``precision``) and what the file
  says of its capture (``taken``, ``taken_zone``, ``latitude``, ``longitude``, ``altitude``, ``camera_make``,
  ``camera_model``, ``lens``, ``orientation``: ``xsearch.capture``).
- ``errors``: files that could not be indexed (``uri``, ``modality``, ``stage``, ``message``, ``at``).
- ``meta``: one row naming the model whose embeddings the database holds, and the schema version.
- ``moments`` (with ``xsearch index --moments``): one row per segment of an audio or video file: ``id``
  (``item_id << 20 | n``), ``item_id``, ``uri``, ``modality`` (a video's sound track is ``audio``),
  ``start`` and ``end`` in seconds, the file's ``sha256``, ``model_id``, ``embedding``
  (``fixed_size_list<float16, 1024>``: half the bytes, and the precision the re-rank reads anyway) and
  ``indexed_at``. How files are cut is in ``moments.json`` beside the tables (``xsearch.moments``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from xsearch.capture import CAPTURE_COLUMNS
from xsearch.errors import StoreError
from xsearch.modalities import Modality

SCHEMA_VERSION = 1
ITEMS, ERRORS, META, MOMENTS = "items", "errors", "meta", "moments"
NOT_FILTERABLE = frozenset({"embedding", "thumbnail"})
# The types of columns added to existing databases (``Database.open``), as SQL names them.
SQL_TYPES = {pa.string(): "STRING", pa.float64(): "DOUBLE", pa.int32(): "INT"}


def items_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),
            pa.field("modality", pa.string(), nullable=False),
            pa.field("sha256", pa.string()),
            pa.field("size", pa.int64()),
            pa.field("mtime", pa.float64()),
            pa.field("model_id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("indexed_at", pa.timestamp("us", tz="UTC")),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("duration", pa.float64()),
            pa.field("sample_rate", pa.int32()),
            pa.field("thumbnail", pa.binary()),
            pa.field("precision", pa.string()),  # fp32 / bf16: how the encoder ran (added after schema 1)
            # When, where and with what it was captured (``xsearch.capture``; added after schema 1).
            *(pa.field(name, getattr(pa, kind)()) for name, kind in CAPTURE_COLUMNS.items()),
        ]
    )


def moments_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("item_id", pa.int64(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),
            pa.field("modality", pa.string(), nullable=False),
            pa.field("start", pa.float64(), nullable=False),
            pa.field("end", pa.float64(), nullable=False),
            pa.field("sha256", pa.string()),
            pa.field("model_id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float16(), dim), nullable=False),
            pa.field("indexed_at", pa.timestamp("us", tz="UTC")),
        ]
    )


ERRORS_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("modality", pa.string()),
        pa.field("stage", pa.string()),  # scan / read / decode / encode
        pa.field("message", pa.string()),
        pa.field("at", pa.timestamp("us", tz="UTC")),
    ]
)

META_SCHEMA = pa.schema(
    [
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("embed_dim", pa.int32(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
    ]
)


@dataclass
class ItemRecord:
    """One file's row in ``items`` (``id`` is assigned by the database when ``None``)."""

    uri: str
    modality: Modality
    embedding: np.ndarray
    sha256: str | None = None
    size: int | None = None
    mtime: float | None = None
    id: int | None = None
    metadata: dict = field(default_factory=dict)  # width, height, duration, sample_rate, thumbnail
    precision: str | None = None  # the encoder's: fp32 or bf16
    moments: list[Moment] | None = None  # its segments, when the database keeps moments (``None``: not cut)


@dataclass(frozen=True)
class Moment:
    """One segment of a file: ``[start, end)`` seconds of ``modality`` and its unit vector."""

    modality: Modality
    start: float
    end: float
    embedding: np.ndarray


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _unit_rows(vectors: Sequence[np.ndarray], uris: Sequence[str], dim: int, what: str) -> np.ndarray:
    """``float32 [n, dim]`` from the records' vectors; a wrong width or a NaN names its file."""
    flat = np.empty((len(vectors), dim), dtype=np.float32)
    for i, (vector, uri) in enumerate(zip(vectors, uris)):
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != dim:
            raise StoreError(f"{uri}: {what} has {vector.shape[0]} values, expected {dim}")
        if not np.isfinite(vector).all():
            raise StoreError(f"{uri}: {what} contains NaN or infinite values")
        flat[i] = vector
    return flat


def _table(schema: pa.Schema, columns: dict[str, list], flat: np.ndarray) -> pa.Table:
    dim = flat.shape[1]
    vector_type = schema.field("embedding").type.value_type
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1).astype(vector_type.to_pandas_dtype())), dim)
    arrays = [embedding if f.name == "embedding" else pa.array(columns[f.name], type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def items_table(records: Sequence[ItemRecord], model_id: str, dim: int) -> pa.Table:
    """``records`` (their ids already set) as rows of ``items``."""
    flat = _unit_rows([r.embedding for r in records], [r.uri for r in records], dim, "embedding")
    stamp = now()
    columns = {
        "id": [r.id for r in records],
        "uri": [r.uri for r in records],
        "modality": [str(r.modality) for r in records],
        "sha256": [r.sha256 for r in records],
        "size": [r.size for r in records],
        "mtime": [r.mtime for r in records],
        "model_id": [model_id] * len(records),
        "indexed_at": [stamp] * len(records),
        "precision": [r.precision for r in records],
    }
    for key in ("width", "height", "duration", "sample_rate", "thumbnail", *CAPTURE_COLUMNS):
        columns[key] = [r.metadata.get(key) for r in records]
    return _table(items_schema(dim), columns, flat)


def moments_table(records: Sequence[ItemRecord], model_id: str, dim: int, moment_id) -> pa.Table:
    """The moments of ``records`` as rows of ``moments``: each file's in (modality, start) order, numbered
    by ``moment_id(item id, n)``."""
    columns: dict[str, list] = {name: [] for name in moments_schema(dim).names}
    vectors, uris, stamp = [], [], now()
    for record in records:
        for n, moment in enumerate(sorted(record.moments or [], key=lambda m: (str(m.modality), m.start))):
            vectors.append(moment.embedding)
            uris.append(record.uri)
            for key, value in (
                ("id", moment_id(record.id, n)),
                ("item_id", record.id),
                ("uri", record.uri),
                ("modality", str(moment.modality)),
                ("start", float(moment.start)),
                ("end", float(moment.end)),
                ("sha256", record.sha256),
                ("model_id", model_id),
                ("indexed_at", stamp),
            ):
                columns[key].append(value)
    return _table(moments_schema(dim), columns, _unit_rows(vectors, uris, dim, "a moment's embedding"))


def embeddings_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A ``fixed_size_list<float32 or float16, d>`` column -> ``float32 [n, d]`` without a Python loop."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
