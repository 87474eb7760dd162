"""``xsearch info`` and ``xsearch errors``: what a database holds, and what could not be indexed."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from xsearch.cli.app import (
    CheckpointOpt,
    DbOpt,
    ModelFlags,
    ModelOpt,
    command,
    handled_errors,
    note_random_weights,
    open_collection,
    shown,
)


@command()
def errors(
    db: DbOpt = ...,
    json_: Annotated[
        bool, typer.Option("--json", help="One JSON document (a list of errors) instead of text.")
    ] = False,
) -> None:
    """List the files that could not be indexed, with the reason (retried on the next `xsearch index`)."""
    with handled_errors():
        rows = open_collection(db).errors().to_pylist()
    if json_:
        keys = ("uri", "modality", "stage", "message")
        typer.echo(json.dumps([{k: row[k] for k in keys} for row in rows], indent=1))
        return
    if not rows:
        typer.echo("no errors: every file found so far was indexed")
    for row in rows:
        typer.echo(f"{shown(row['uri'])}: {shown(row['message'])} [{row['stage']}]")


@command()
def info(
    db: DbOpt = ...,
    json_: Annotated[bool, typer.Option("--json", help="One JSON document instead of text.")] = False,
    check: Annotated[bool, typer.Option(help="Read every stored row first (a damaged file is reported).")] = True,
    checkpoint: CheckpointOpt = None,
    model: ModelOpt = None,
) -> None:
    """What a database holds: items per modality, model, index kind and freshness, errors, size.

    --checkpoint and --model are accepted as on every command; with them, info also checks that they are
    the database's model.
    """
    with handled_errors():
        collection = open_collection(db, ModelFlags(checkpoint, model))
        if (checkpoint or model) and collection.exists():
            if collection.choice.checkpoint:  # the file's own model is read from it: a trial checkpoint's seed
                collection.choice.check_checkpoint(collection.store.model_id, collection.path)
            else:
                collection.model_choice()  # another model than the database's is named
        facts = collection.info(check=check)
    note_random_weights(collection)
    facts["auto_precision"] = _auto_precision()
    if json_:
        typer.echo(json.dumps(facts, indent=1))
        return
    typer.echo(f"database  {shown(facts['db'])} ({facts['bytes'] / 1e6:.1f} MB)")
    typer.echo(f"model     {facts['model_id']}")
    if facts["precision"]:
        typer.echo("precision " + ", ".join(f"{name} ({count} items)" for name, count in facts["precision"].items()))
    auto = facts["auto_precision"]
    typer.echo(f"auto      {auto['precision']} on this machine: {auto['why']}")
    typer.echo(f"items     {facts['items']}  (errors: {facts['errors']}, see `xsearch errors`)")
    _modality_lines(facts["by_modality"], facts["indices"])
    moments = facts.get("moments")
    if moments:
        cut = f"{moments['seconds']:g} s every {moments['stride']:g} s" if moments["seconds"] else "settings missing"
        typer.echo(f"moments   {moments['moments']}  ({cut})")
        _modality_lines(moments["by_modality"], moments["indices"])


def _auto_precision() -> dict[str, str]:
    """What ``--precision auto`` picks here, and why (a GPU, the CPU's kind, ONNX Runtime); torch stays unloaded."""
    from xsearch.precision import auto_precision, cuda_visible

    precision, why = auto_precision(cuda_visible())
    return {"precision": precision, "why": why}


def _modality_lines(counts: dict[str, int], indices: dict[str, dict]) -> None:
    for modality, count in counts.items():
        index = indices[modality]
        state = "missing" if index["kind"] is None else f"{index['kind']}, {'fresh' if index['fresh'] else 'stale'}"
        if "damaged" in index:
            state = "damaged or from an older xsearch (xsearch index rebuilds it)"
        typer.echo(f"  {modality:<8} {count:>8}  index: {state}")
