"""``xsearch embed``: files -> embeddings, as JSON lines or a file; ``xsearch random-checkpoint``: weights
for trying xsearch without downloading the real ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from xsearch.cli.app import (
    EXIT_SOME_FAILED,
    CheckpointOpt,
    DeviceOpt,
    ModelOpt,
    PrecisionOpt,
    VerifyOpt,
    command,
    fail,
    handled_errors,
    open_collection,
    shown,
)

OUTPUT_SUFFIXES = (".npy", ".parquet", ".arrow")


@command()
def embed(
    paths: Annotated[list[str], typer.Argument(help="Media files to embed.")],
    checkpoint: CheckpointOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    verify: VerifyOpt = False,
    as_: Annotated[
        str | None, typer.Option("--as", help="Modality of all PATHS (default: the rules `index` applies).")
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(help="Write to FILE.npy (vectors of the files that embedded, in order), .parquet or .arrow."),
    ] = None,
) -> None:
    """Embed files: one JSON line per file (path, modality, vector or error), or a file with --output.

    A file's modality follows the same rules as `xsearch index` (a folder named depth/thermal/imu, a stem
    ending _depth..., the extension). Exit code 3 when some files could not be embedded.
    """
    if output and not output.endswith(OUTPUT_SUFFIXES):
        fail(f"--output {output}: expected a file name ending in {', '.join(OUTPUT_SUFFIXES)}")
    with handled_errors():
        collection = open_collection(None, checkpoint, model, device, precision, verify)
        results = collection.embed(paths, modality=as_)
        if output:
            write_embeddings(results, Path(output), collection.encoder.embed_dim)
    failed = [r for r in results if r.error is not None]
    if output:
        typer.echo(f"{output}: {len(results) - len(failed)} embeddings of {len(results)} files")
        for result in failed:
            typer.echo(f"  failed: {shown(result.message)}", err=True)
    else:
        for result in results:
            typer.echo(json.dumps(result.as_json()))
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def write_embeddings(results, path: Path, dim: int) -> None:
    """``.npy``: ``float32 [n, dim]`` of the files that embedded; ``.parquet``/``.arrow``: one row per file
    (path, modality, embedding or null, error)."""
    import numpy as np
    import pyarrow as pa

    if path.suffix == ".npy":
        vectors = [r.embedding for r in results if r.embedding is not None]
        np.save(path, np.stack(vectors) if vectors else np.zeros((0, dim), np.float32))
        return
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
    )
    if path.suffix == ".parquet":
        import pyarrow.parquet

        pyarrow.parquet.write_table(table, path)
    else:
        import pyarrow.feather

        pyarrow.feather.write_feather(table, path)


@command(name="random-checkpoint")
def random_checkpoint(
    output: Annotated[str, typer.Argument(help="The checkpoint file to write, e.g. trial.pt.")],
    model: Annotated[str, typer.Option(help="Architecture: tiny_test (tiny, fast) or imagebind_huge.")] = "tiny_test",
    seed: Annotated[int, typer.Option(help="Random seed of the weights.")] = 0,
) -> None:
    """Write a checkpoint of random weights, to try xsearch without the real 4.5 GB ImageBind weights.

    Everything runs (indexing, search, the contact sheet), but the results are meaningless: every command on
    a database made with it says so. Then: xsearch index DIR --db trial.db --checkpoint trial.pt
    """
    with handled_errors():
        from xsearch.collection import Collection

        path = Collection.random_checkpoint(output, model, seed)
    typer.echo(f"{path}: random weights for {model} (seed {seed}); results made with it are meaningless.")
    typer.echo(f"Try: xsearch index DIR --db trial.db --checkpoint {path}")
