"""``xsearch embed``: files -> JSON lines of embeddings."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.app import CheckpointOpt, DeviceOpt, ModelOpt, app, handled_errors


@app.command()
def embed(
    paths: Annotated[list[str], typer.Argument(help="Media files to embed.")],
    checkpoint: CheckpointOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    as_: Annotated[str | None, typer.Option("--as", help="Modality of all PATHS (depth, thermal, imu...).")] = None,
) -> None:
    """Embed files and print one JSON line per file (path, modality, 1024-d vector)."""
    with handled_errors():
        from xsearch.encoder import Encoder
        from xsearch.errors import UsageError
        from xsearch.modalities import Modality

        try:
            modality = Modality(as_) if as_ else None  # a typo fails before the model loads
        except UsageError as exc:
            raise exc.for_argument("assign") from None
        encoder = Encoder.from_pretrained(checkpoint, model, device)
        for result in encoder.encode_files(paths, modality=modality):
            typer.echo(json.dumps({"path": result.path, "modality": str(result.modality), **result.as_json()}))
