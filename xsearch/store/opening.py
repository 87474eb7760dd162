"""Opening a database: its meta table checked (schema version, model), a new one created, an older one's
missing columns added, a lost meta table rebuilt from the rows."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa

from xsearch.errors import DatabaseDamaged, ModelMismatchError, StoreError
from xsearch.objects import is_object_uri, lance_options
from xsearch.store.filters import null_of
from xsearch.store.lance_errors import translated
from xsearch.store.schema import (
    ERRORS,
    ERRORS_SCHEMA,
    ITEMS,
    META,
    META_SCHEMA,
    SCHEMA_VERSION,
    SQL_TYPES,
    items_schema,
)
from xsearch.store.side_files import SideFiles

log = logging.getLogger(__name__)


def connect(
    path: Path, files: SideFiles, model_id: str | None, embed_dim: int | None, create: bool
) -> tuple[object, str, int]:
    """``(lancedb connection, model id, embedding width)`` of the database at ``path``, created when new
    and ``create``. ``model_id`` must match the stored one (``None`` accepts it: a reader); a writer's open
    brings columns added since schema 1."""
    import lancedb

    exists = files.exists(f"{META}.lance")
    if not exists and not create:
        raise StoreError(f"{path}: no xsearch database here (index some files first)")
    if not exists and model_id is None:
        raise StoreError(f"{path}: a new database needs a model id")
    if files.exists("") and not files.is_folder():
        raise StoreError(f"{path}: exists and is not a directory")
    if not exists and isinstance(path, Path):
        refuse_a_foreign_folder(path)
    if model_id is not None:
        files.check_writable()  # before anything is written: a server that could lose commits is refused
    connection = lancedb.connect(str(path), storage_options=lance_options() if is_object_uri(path) else None)
    if exists:
        meta = connection.open_table(META).to_arrow().to_pylist()
        if not meta:
            raise StoreError(f"{path}: the meta table is empty; the database is damaged")
        stored = meta[0]
        if stored["schema_version"] != SCHEMA_VERSION:
            raise StoreError(
                f"{path}: database schema version {stored['schema_version']}, this xsearch reads "
                f"version {SCHEMA_VERSION}; re-index into a new directory"
            )
        ModelMismatchError.check(path, stored["model_id"], model_id)
        for name in (ITEMS, ERRORS):  # both tables present, or the database is damaged
            with translated(path / f"{name}.lance"):
                connection.open_table(name)
        if model_id is not None:
            _add_missing_columns(connection, int(stored["embed_dim"]))
        return connection, stored["model_id"], int(stored["embed_dim"])
    held = _rows_model(connection, files, path)  # a lost meta table: the rows say whose embeddings they are
    if held is not None:
        ModelMismatchError.check(path, held[0], model_id)
        log.warning("%s: the meta table was missing; rebuilt from the rows (model %s)", path, held[0])
        model_id, embed_dim = held
    if not embed_dim:
        raise StoreError(f"{path}: a new database needs the width of its embeddings (embed_dim)")
    # Items and errors first, meta last: a database is complete once its meta table exists.
    connection.create_table(ITEMS, schema=items_schema(embed_dim), exist_ok=True)
    connection.create_table(ERRORS, schema=ERRORS_SCHEMA, exist_ok=True)
    meta = pa.table(
        {"model_id": [model_id], "embed_dim": [embed_dim], "schema_version": [SCHEMA_VERSION]},
        schema=META_SCHEMA,
    )
    connection.create_table(META, data=meta)
    return connection, model_id, embed_dim


# What a database folder holds (and what its writer lock puts there before it opens); anything else means the
# folder is something else: a media folder given as --db by mistake is not turned into a database.
DATABASE_ENTRIES = {
    "meta.lance", "items.lance", "errors.lance", "moments.lance", "faiss", "faiss-moments", "readers",
    "writer.lock", "next_id", "next_id.tmp", "moments.json", "moments.json.tmp", "assignments.json",
    "assignments.json.tmp",
}  # fmt: skip


def refuse_a_foreign_folder(path: Path) -> None:
    try:
        foreign = sorted(e.name for e in path.iterdir() if e.name not in DATABASE_ENTRIES)
    except (FileNotFoundError, NotADirectoryError):
        return
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise StoreError(
            f"{path}: a folder holding other files ({shown}), not an xsearch database; give a new or empty "
            "folder as the database (did the arguments swap places?)",
            argument="db",
        )


def _add_missing_columns(connection, embed_dim: int) -> None:
    """Columns added to ``items`` after schema 1 (``precision``), as nulls: one commit, writers only."""
    table = connection.open_table(ITEMS)
    present = set(table.schema.names)
    missing = [f for f in items_schema(embed_dim) if f.name not in present]
    if missing:
        table.add_columns({f.name: null_of(SQL_TYPES[f.type]) for f in missing})


def _rows_model(connection, files: SideFiles, path: Path) -> tuple[str, int] | None:
    """``(model id, width)`` of the rows of an ``items`` table left without its meta table, or ``None`` when
    there is no such table or it has no rows; rows of several models are damage, never mixed further."""
    if not files.exists(f"{ITEMS}.lance"):
        return None
    with translated(path / f"{ITEMS}.lance"):
        table = connection.open_table(ITEMS)
        models = table.to_lance().to_table(columns=["model_id"])["model_id"].unique().to_pylist()
        width = table.schema.field("embedding").type.list_size
    if not models:
        return None
    if len(models) > 1:
        raise DatabaseDamaged(path / f"{META}.lance", f"missing, and the rows hold several models: {models}")
    return models[0], width
