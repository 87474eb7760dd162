"""``xsearch embed``: files -> embeddings, as JSON lines or a file; ``xsearch random-checkpoint``: weights
for trying xsearch without downloading the real ones."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from xsearch.cli.app import (
    EXIT_SOME_FAILED,
    AsOpt,
    ModelFlags,
    command,
    fail,
    handled_errors,
    model_flags,
    note_random_weights,
    open_collection,
    output_file,
    parse_assignments,
    shown,
)

OUTPUT_SUFFIXES = (".jsonl", ".npy", ".parquet", ".arrow")


@command()
@model_flags
def embed(
    paths: Annotated[list[str], typer.Argument(help="Media files, or folders (the files `index` would take).")],
    as_: AsOpt = None,
    db: Annotated[
        str | None,
        typer.Option("--db", help="A database whose model, and whose own modalities (xsearch bind), embed the files."),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            help="Write to FILE.jsonl (the lines printed otherwise), .parquet or .arrow (a row per file), or "
            ".npy (the vectors that embedded; FILE.paths.json says which file each row is)."
        ),
    ] = None,
    flags: ModelFlags = ModelFlags(),
) -> None:
    """Embed files: one JSON line per file (path, modality, vector or error), or a file with --output.

    A file's modality follows the same rules as `xsearch index` (a folder named depth/thermal/imu, a stem
    ending _depth..., the extension, the content: a video file with only sound is audio); a folder stands
    for the files `index` would take from it. Exit code 3 when some files could not be embedded.
    """
    output = output_file(output, "--output", OUTPUT_SUFFIXES)
    with handled_errors():
        collection = open_collection(db, flags)
        results = collection.embed(paths, assign=parse_assignments(as_ or [], paths))
        if output:
            written = write_embeddings(results, Path(output), collection.encoder)
    failed = [r for r in results if r.error is not None]
    if output:
        also = f" (rows: {written})" if written != Path(output) else ""
        typer.echo(f"{output}: {len(results) - len(failed)} embeddings of {len(results)} files{also}")
        for result in failed:
            typer.echo(f"  failed: {shown(result.message)}", err=True)
    else:
        for result in results:
            typer.echo(json.dumps(result.as_json()))
    note_random_weights(collection)
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def write_embeddings(results, path: Path, encoder) -> Path:
    """Write ``results`` to ``path`` by its suffix; returns the file that says which row is which file.

    ``.jsonl``: the lines ``embed`` prints. ``.parquet``/``.arrow``: one row per file (path, modality,
    embedding or null, error), the model id in the schema's metadata. ``.npy``: ``float32 [n, dim]`` of the
    files that embedded, with ``<name>.paths.json`` beside it: the model id and each row's file.
    """
    import numpy as np
    import pyarrow as pa

    dim, model = encoder.embed_dim, {"model_id": encoder.model_id}
    if path.suffix == ".jsonl":
        with open(path, "w", encoding="utf-8") as out:
            out.writelines(json.dumps(r.as_json()) + "\n" for r in results)
        return path
    if path.suffix == ".npy":
        embedded = [r for r in results if r.embedding is not None]
        np.save(path, np.stack([r.embedding for r in embedded]) if embedded else np.zeros((0, dim), np.float32))
        rows = path.with_suffix(".paths.json")
        rows.write_text(json.dumps({**model, "paths": [r.path for r in embedded]}, indent=1), encoding="utf-8")
        return rows
    flat = np.concatenate([r.embedding if r.embedding is not None else np.zeros(dim, np.float32) for r in results])
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
    missing = pa.array([r.embedding is None for r in results])
    table = pa.table(
        {
            "path": [r.path for r in results],
            "modality": [r.modality.value if r.modality else None for r in results],
            "embedding": pa.compute.if_else(missing, pa.nulls(len(results), vectors.type), vectors),
            "error": [r.message for r in results],
        }
    ).replace_schema_metadata({"xsearch": json.dumps(model)})
    if path.suffix == ".parquet":
        import pyarrow.parquet

        pyarrow.parquet.write_table(table, path)
    else:
        import pyarrow.feather

        pyarrow.feather.write_feather(table, path)
    return path


@command(name="random-checkpoint")
def random_checkpoint(
    output: Annotated[str, typer.Argument(help="The checkpoint file to write, e.g. trial.pt.")],
    model: Annotated[str, typer.Option(help="Architecture: tiny_test (tiny, fast) or imagebind_huge.")] = "tiny_test",
    seed: Annotated[int, typer.Option(help="Random seed of the weights.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace the file if it exists.")] = False,
) -> None:
    """Write a checkpoint of random weights, to try xsearch without the real 4.5 GB ImageBind weights.

    Everything runs (indexing, search, the contact sheet), but the results are meaningless: every command on
    a database made with it says so. Then: xsearch index DIR --db trial.db --checkpoint trial.pt
    """
    output = output_file(output, "OUTPUT")  # its folder made when missing, as --db's is
    if os.path.lexists(output) and not force:
        fail(f"{shown(output)}: exists; give --force to replace it (a checkpoint may be the real weights)")
    with handled_errors():
        from xsearch.collection import Collection

        path = Collection.random_checkpoint(output, model, seed)
    typer.echo(f"{path}: random weights for {model} (seed {seed}); results made with it are meaningless.")
    typer.echo(f"Try: xsearch index DIR --db trial.db --checkpoint {path}")
