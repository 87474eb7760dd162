"""``xsearch bind``: a new modality joined to the database's space from paired examples."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from xsearch.bind.binding import FEATURES
from xsearch.cli.app import (
    DbOpt,
    ModelFlags,
    command,
    handled_errors,
    model_flags,
    note_random_weights,
    open_collection,
)
from xsearch.options import BindOptions

_DEFAULTS = BindOptions(name="", pairs="", anchor="")


@command()
@model_flags
def bind(
    name: Annotated[str, typer.Argument(help="The new modality's name (one word, e.g. sonar).")],
    db: DbOpt = ...,
    pairs: Annotated[
        str,
        typer.Option(
            help="CSV with a header: the new modality's file, its anchor (a file, or a text), optional label."
        ),
    ] = ...,
    anchor: Annotated[
        str, typer.Option(help="The modality of the anchors: image, text, audio, depth, thermal, imu.")
    ] = ...,
    features: Annotated[
        str | None,
        typer.Option(
            help=f"How the new files are read: {', '.join(FEATURES)} (a frozen tower, or a small encoder trained on "
            ".npy arrays). Default: raw for .npy files, else the tower that reads the files' kind."
        ),
    ] = None,
    holdout: Annotated[float, typer.Option(help="Fraction of pairs held out to choose the epoch.")] = _DEFAULTS.holdout,
    epochs: Annotated[int, typer.Option(min=1, help="At most this many epochs.")] = _DEFAULTS.epochs,
    patience: Annotated[
        int, typer.Option(min=1, help="Stop after this many epochs without better held-out recall.")
    ] = _DEFAULTS.patience,
    seed: Annotated[int, typer.Option(help="Seed of the split and the training.")] = _DEFAULTS.seed,
    replace: Annotated[
        bool, typer.Option("--replace", help="Bind an existing name again and re-index its files.")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    flags: ModelFlags = ModelFlags(),
) -> None:
    """Teach the database a new modality from pairs with one it has: its files become searchable by text,
    photos and sounds.

    Only a small adapter trains (the model stays frozen), on the CPU or the GPU. Afterwards `index --as
    NAME=FOLDER`, `search --query NAME=FILE`, `--target NAME`, `classify` and `serve` know the modality.

    Example: xsearch bind sonar --db media.db --pairs pairs.csv --anchor image
    """
    from xsearch.bind.train import bind as train_binding

    options = BindOptions(
        name, pairs, anchor, features, holdout, epochs, patience, seed=seed, replace=replace, progress=not json_
    )
    with handled_errors():
        collection = open_collection(db, flags)
        report = train_binding(collection, options)
    if json_:
        typer.echo(json.dumps(report.as_json(), indent=1))
    else:
        print_report(report)
    note_random_weights(collection)


def print_report(report) -> None:
    typer.echo(f"bound {report.name} to {report.anchor} ({report.features} features): {report.pairs} pairs")
    typer.echo(
        f"  trained on {report.trained}, held out {report.held_out}; best epoch {report.best_epoch} of {report.epochs}"
    )
    if report.recall_at_1 is not None:
        typer.echo(
            f"  held-out recall@1 {report.recall_at_1:.2f} (chance {report.chance_at_1:.2f}), "
            f"recall@10 {report.recall_at_10:.2f} (chance {report.chance_at_10:.2f})"
        )
    if report.zero_shot is not None:
        typer.echo(
            f"  zero-shot accuracy against the {report.labels} labels' texts: {report.zero_shot:.2f} "
            f"(chance {report.zero_shot_chance:.2f})"
        )
    if report.reindexed:
        typer.echo(f"  re-indexed {report.reindexed} files with the new adapter")
    typer.echo(f"  {report.seconds:.1f} s")
