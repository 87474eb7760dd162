"""``xsearch search`` and ``xsearch classify``: composed cross-modal queries and zero-shot labels."""

from __future__ import annotations

import json
import math
from typing import Annotated

import typer

from cli.app import CheckpointOpt, DbOpt, DeviceOpt, app, fail, handled_errors
from xsearch.errors import QueryError

InputOpt = Annotated[list[str] | None, typer.Option(help="FILE[:WEIGHT], repeatable.")]


def split_weight(value: str, option: str) -> tuple[str, float]:
    """``"rain.wav:0.4"`` -> ``("rain.wav", 0.4)``; no numeric suffix means weight 1.

    A text that itself ends in ``:<number>`` needs an explicit weight: ``--text "ratio 3:2:1"``.
    """
    head, sep, tail = value.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
        except ValueError:
            return value, 1.0
        if not math.isfinite(weight):
            raise QueryError(f"{option} {value!r}: weight {tail!r} is not a finite number")
        return head, weight
    return value, 1.0


def build_query(inputs: dict[str, list[str]]):
    """{option: [values]} -> one ``Query`` summing every input with its weight."""
    from xsearch.query import Query

    terms = []
    for option, values in inputs.items():
        for value in values or []:
            target, weight = split_weight(value, f"--{option}")
            if option == "text":
                terms.append(Query.text(target, weight))
            elif option == "item":
                terms.append(Query.item(int(target) if target.isdigit() else target, weight))
            else:
                terms.append(Query.file(target, option, weight))
    if not terms:
        raise QueryError("give at least one input: --image, --audio, --text, --video, --item ...")
    query = terms[0]
    for term in terms[1:]:
        query = query + term
    return query


def print_table(results) -> None:
    if not results:
        typer.echo("no results")
        return
    typer.echo(f"{'rank':>4}  {'score':>7}  {'modality':<8}  uri")
    for r in results:
        typer.echo(f"{r.rank:>4}  {r.score:>7.4f}  {r.modality:<8}  {r.uri}")


@app.command()
def search(
    db: DbOpt = ...,
    image: InputOpt = None,
    video: InputOpt = None,
    audio: InputOpt = None,
    text: Annotated[list[str] | None, typer.Option(help='"TEXT"[:WEIGHT], repeatable.')] = None,
    depth: InputOpt = None,
    thermal: InputOpt = None,
    imu: InputOpt = None,
    item: Annotated[list[str] | None, typer.Option(help="Indexed file (path or id)[:WEIGHT]: no model run.")] = None,
    target: Annotated[str, typer.Option(help="Modalities to search: image,audio,... or all.")] = "all",
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Number of results.")] = 10,
    where: Annotated[str | None, typer.Option(help='Lance SQL filter on items, e.g. "width >= 1000".')] = None,
    path: Annotated[str | None, typer.Option(help="Glob on the file path, e.g. '*/2024/*'.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    html: Annotated[str | None, typer.Option(help="Also write a contact sheet (HTML) to this file.")] = None,
    checkpoint: CheckpointOpt = None,
    model: Annotated[str | None, typer.Option(help="Architecture of --checkpoint (default: the database's).")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Search with any mix of inputs; several inputs are added with their weights (default 1).

    Example: xsearch search --db media.db --image bird.jpg:0.6 --audio waves.wav:0.4 --target image
    """
    inputs = {"image": image, "video": video, "audio": audio, "text": text, "depth": depth}
    inputs.update({"thermal": thermal, "imu": imu, "item": item})
    with handled_errors():
        from xsearch.query import Engine

        query = build_query(inputs)
        engine = Engine.open(db, checkpoint=checkpoint, architecture=model, device=device)
        results = engine.search(query, target=target, k=k, where=where, path=path)
        if html:
            from xsearch.contact_sheet import write_contact_sheet

            write_contact_sheet(results, engine.store, html)
    if json_:
        typer.echo(json.dumps(results.as_json(), indent=1))
    else:
        print_table(results)
        if html:
            typer.echo(f"contact sheet: {html}")


@app.command()
def classify(
    db: DbOpt = ...,
    labels: Annotated[str, typer.Option(help='Comma-separated labels, e.g. "dog,cat,rain,waves".')] = ...,
    target: Annotated[str, typer.Option(help="Modalities to label: audio,image,... or all.")] = "all",
    where: Annotated[str | None, typer.Option(help="Lance SQL filter on items.")] = None,
    output: Annotated[str | None, typer.Option(help="Write the report to a .csv or .parquet file.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
    checkpoint: CheckpointOpt = None,
    model: Annotated[str | None, typer.Option(help="Architecture of --checkpoint (default: the database's).")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Zero-shot: give every item its best text label and a score (softmax over the labels)."""
    if output and not output.endswith((".csv", ".parquet")):
        fail(f"--output {output}: expected a .csv or .parquet file name")
    with handled_errors():
        from xsearch.query import Engine

        engine = Engine.open(db, checkpoint=checkpoint, architecture=model, device=device)
        report = engine.classify(labels.split(","), target=target, where=where)
        if output:
            import pyarrow.csv
            import pyarrow.parquet

            (pyarrow.csv.write_csv if output.endswith(".csv") else pyarrow.parquet.write_table)(report, output)
    for row in report.to_pylist():
        if json_:
            typer.echo(json.dumps(row))
        else:
            typer.echo(f"{row['score']:.3f}  {row['label']:<20}  {row['uri']}")
