"""``xsearch search`` and ``xsearch classify``: composed cross-modal queries and zero-shot labels.

``search`` has one input option per modality of the modality table (``--image``, ``--audio``, ``--text``...),
made from the table when this module loads, plus ``--item`` for stored items.

Weights: a text is always taken whole, unless it starts with ``WEIGHT::`` (``"0.5::at night"``), a prefix
no sentence has by accident; ``"meeting at 10:30"`` is that text, weight 1. A file or item takes a
``:WEIGHT`` suffix (``bird.jpg:0.6``), but a path that exists as written is always the path. A moment of
an item, ``--item ID@TIME`` (``12@63.5``, ``talk.mp4@12:03``), takes its weight as a prefix, as texts do
(``0.5::12@63.5``), since its time may hold colons.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shlex
from typing import Annotated

import typer

from xsearch.cli.app import (
    DbOpt,
    ModelFlags,
    command,
    handled_errors,
    model_flags,
    note_random_weights,
    open_collection,
    option_flags,
    output_file,
    shown,
)
from xsearch.errors import UsageError
from xsearch.modalities import REGISTRY, Modality
from xsearch.options import ClassifyOptions, SearchOptions

ITEM = "item"
QUERY = "query"  # an input of any modality, named in its value: the database's own included
TEXT_WEIGHT = "::"


def _weight(text: str, option: str, value: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise UsageError(f"{option} {value!r}: weight {text.strip()!r} is not a number") from None
    if not math.isfinite(weight):
        raise UsageError(f"{option} {value!r}: weight {text.strip()!r} is not a finite number")
    return weight


def split_text_weight(value: str, option: str = "--text") -> tuple[str, float]:
    """``"0.5::at night"`` -> ``("at night", 0.5)``; a text without a numeric ``WEIGHT::`` prefix is whole."""
    head, sep, tail = value.partition(TEXT_WEIGHT)
    if not sep:
        return value, 1.0
    try:
        float(head)
    except ValueError:
        return value, 1.0  # "std::vector": a text that happens to hold "::"
    return tail, _weight(head, option, value)


def split_file_weight(value: str, option: str, must_exist: bool = True) -> tuple[str, float]:
    """``"rain.wav:0.4"`` -> ``("rain.wav", 0.4)``. A path that exists as written is never split; a suffix
    that is not a number is an error when the part before it exists (``chelsea.png:abc``)."""
    if must_exist and os.path.exists(value):
        return value, 1.0
    head, sep, tail = value.rpartition(":")
    if not (sep and head):
        return value, 1.0
    try:
        float(tail)
    except ValueError:
        if must_exist and os.path.exists(head):
            return head, _weight(tail, option, value)  # raises: the weight is the problem, not the file
        return value, 1.0
    return head, _weight(tail, option, value)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def split_moment(value: str) -> tuple[tuple[str, float], float] | None:
    """``"0.5::12@1:03"`` -> ``(("12", 63.0), 0.5)``: an item's moment, when the text after the last ``@``
    is a time (seconds, ``M:SS`` or ``H:MM:SS``); ``None`` for anything else (a path with an ``@`` in it)."""
    from xsearch.moments import split_item_time

    text, weight = split_text_weight(value, f"--{ITEM}")
    key, at = split_item_time(text)
    if at is None:
        key, sep, when = text.rpartition("@")
        if sep and key.isascii() and key.isdigit() and not os.path.exists(text):  # an id, then no time
            clock_part, _, tail = when.rpartition(":")
            hint = ""
            if split_item_time(f"{key}@{clock_part}")[1] is not None and _is_number(tail):
                hint = f"; a moment's weight goes first: {tail}::{key}@{clock_part}"
            raise UsageError(f"--{ITEM} {value!r}: {when!r} is not a time (SECONDS, M:SS or H:MM:SS){hint}")
        return None
    return (key, at), weight


def build_query(inputs: dict[str, list[str] | None]):
    """{option name: [values]} -> one ``Query`` summing every input with its weight."""
    from xsearch.query import Query

    parts = []
    for option, value in _named_inputs(inputs):
        is_text = option != ITEM and Modality(option).spec.query_input == "text"
        flag = f"--{QUERY} {option}=" if option not in inputs else f"--{option}"
        moment = split_moment(value) if option == ITEM else None
        if is_text:
            target, weight = split_text_weight(value, flag)
        elif moment is not None:
            (target, at), weight = moment
            parts.append(Query.item(target, weight, at=at))
            continue
        else:
            target, weight = split_file_weight(value, flag, must_exist=option != ITEM)
        if option == ITEM:
            parts.append(Query.item(target, weight))  # an id or a path: the store tells them apart
        else:
            parts.append(Query.input(option, target, weight))
    if not parts:
        names = ", ".join(f"--{m.value}" for m in Modality)
        raise UsageError(f"give at least one input: {names}, --{ITEM} or --{QUERY} NAME=FILE")
    return Query.sum(parts)


def _named_inputs(inputs: dict[str, list[str] | None]) -> list[tuple[str, str]]:
    """``(modality name or "item", value)`` of every input; ``--query NAME=VALUE`` names its modality."""
    named = []
    for option, values in inputs.items():
        for value in values or []:
            if option != QUERY:
                named.append((option, value))
                continue
            name, sep, rest = value.partition("=")
            if not sep or not rest:
                raise UsageError(f"--{QUERY} {value!r}: expected MODALITY=FILE (or text=TEXT)")
            try:
                named.append((Modality(name).value, rest))
            except UsageError as exc:
                raise UsageError(f"--{QUERY} {value!r}: {exc}") from None
    return named


def print_table(results) -> None:
    from xsearch.capture import describe
    from xsearch.moments import clock_span

    if not results:
        typer.echo("no results")
        return
    typer.echo(f"{'rank':>4}  {'score':>7}  {'calibrated':>10}  {'modality':<8}  uri")
    for r in results:
        also = f"  (also: {', '.join(map(shown, r.duplicates))})" if r.duplicates else ""
        when = f" @ {clock_span(r.start, r.end)}" if r.is_moment else ""
        taken = describe(r.metadata)
        taken = f"  [{taken}]" if taken else ""
        line = f"{r.rank:>4}  {r.score:>7.4f}  {r.calibrated:>10.2f}  {r.modality.value:<8}  {shown(r.uri)}{when}"
        typer.echo(line + taken + also)


def _search(
    db: DbOpt = ...,
    options: SearchOptions = ...,
    json_: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    html: Annotated[str | None, typer.Option(help="Also write a contact sheet (HTML) to this file.")] = None,
    link_originals: Annotated[
        bool, typer.Option(help="In the contact sheet, link each card to its original file (file:// links).")
    ] = False,
    stray: Annotated[list[str] | None, typer.Argument(hidden=True, show_default=False)] = None,
    modality: Annotated[str | None, typer.Option("--modality", hidden=True)] = None,
    flags: ModelFlags = ModelFlags(),
    **inputs: list[str] | None,
) -> None:
    """Search with any mix of inputs; several inputs are added with their weights (default 1).

    Weights: FILE:WEIGHT for files and items (bird.jpg:0.6; a path that exists as written is never split),
    WEIGHT::TEXT for text ("0.5::at night"; any other text is taken whole, colons and all). Negative
    weights subtract.

    One target is ranked by raw cosine (score); several are merged by calibrated score (how far a hit stands
    above what the query scores against that modality at random), so that images, sounds and clips compete
    fairly.

    Example: xsearch search --db media.db --image bird.jpg:0.6 --audio waves.wav:0.4 --target image
    """
    html = output_file(html, "--html")
    with handled_errors():
        _refuse_guesses(stray, modality)
        collection = open_collection(db, flags)
        collection.bound_modalities()  # the database's own modalities, before the options name them
        options = options()
        query = build_query(inputs)
        results = collection.search(query, options)
        if html:
            from xsearch.contact_sheet import write_contact_sheet

            write_contact_sheet(results, html, database=str(collection.path), link_originals=link_originals)
    note_random_weights(collection)
    if json_:
        typer.echo(json.dumps(results.as_json(), indent=1))
    else:
        print_table(results)
        if html:
            typer.echo(f"contact sheet: {html}")


def _refuse_guesses(stray: list[str] | None, modality: str | None) -> None:
    """What a newcomer tries first, answered with the option meant (click would say "no such option")."""
    if stray:
        words = " ".join(stray)
        raise UsageError(f"unexpected argument {words!r}: to search with a text, give --text {shlex.quote(words)}")
    if modality is not None:
        raise UsageError(
            "there is no --modality: --target chooses what is searched (e.g. --target image), and --text, --image, "
            "--audio... give what to search with"
        )


def _input_parameters() -> list[inspect.Parameter]:
    """One repeatable option per modality in the table, then ``--item``."""
    params = []
    for spec in REGISTRY.values():
        shape = '"TEXT" or "WEIGHT::TEXT"' if spec.query_input == "text" else "FILE or FILE:WEIGHT"
        option = typer.Option(f"--{spec.name}", help=f"{spec.help or spec.name}: {shape}, repeatable.")
        params.append(_option(spec.name, option))
    item_help = (
        "Indexed file (path or id), or ITEM:WEIGHT: its stored embedding, no model run; ID@SECONDS (or ID@M:SS, "
        "WEIGHT::ID@SECONDS) for its moment at that time; repeatable."
    )
    params.append(_option(ITEM, typer.Option(f"--{ITEM}", help=item_help)))
    query_help = "MODALITY=FILE[:WEIGHT]: an input of any modality, one bound by xsearch bind included; repeatable."
    params.append(_option(QUERY, typer.Option(f"--{QUERY}", help=query_help)))
    return params


def _option(name: str, option) -> inspect.Parameter:
    annotation = Annotated[list[str] | None, option]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def _with_input_options(function):
    """``function(**inputs)`` with the table's input options in its signature, for typer to read."""
    signature = inspect.signature(function, eval_str=True)
    fixed = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD
    ]
    params = _input_parameters() + fixed
    function.__signature__ = signature.replace(parameters=params)
    function.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
    return function


search = command(name="search")(_with_input_options(model_flags(option_flags(SearchOptions)(_search))))


@command()
@model_flags
@option_flags(ClassifyOptions)
def classify(
    db: DbOpt = ...,
    labels: Annotated[
        str | None, typer.Option(help='Zero-shot: comma-separated labels, e.g. "dog,cat,rain,waves".')
    ] = None,
    examples: Annotated[
        str | None, typer.Option(help="Few-shot: a folder with one subfolder of example files per label.")
    ] = None,
    text_weight: Annotated[
        float, typer.Option(help="With --examples: blend in each label's text (its folder name) by this weight.")
    ] = 0.0,
    options: ClassifyOptions = ...,
    output: Annotated[str | None, typer.Option(help="Write the report to a .csv or .parquet file.")] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="One JSON document (a list of labels) instead of a table.")
    ] = False,
    flags: ModelFlags = ModelFlags(),
) -> None:
    """Give every item its most likely label and a score (softmax over the labels).

    Zero-shot from --labels, or few-shot from --examples DIR where DIR/<label>/ holds a few example files
    of any modality (e.g. DIR/dog/bark.wav, DIR/dog/photo.jpg).
    """
    output = output_file(output, "--output", (".csv", ".parquet"))
    with handled_errors():
        collection = open_collection(db, flags)
        collection.bound_modalities()  # the database's own modalities, before the options name them
        labelled = collection.classify(
            labels.split(",") if labels is not None else None,
            options(),
            examples=examples,
            text_weight=text_weight,
        )
        if output:
            import pyarrow.csv
            import pyarrow.parquet

            write = pyarrow.csv.write_csv if output.endswith(".csv") else pyarrow.parquet.write_table
            write(labelled.to_arrow(), output)
    if output and not json_:
        typer.echo(f"{output}: {len(labelled)} items labelled")
    elif json_:
        typer.echo(json.dumps(labelled.as_json(), indent=1))
    else:
        typer.echo(f"{'id':>6}  {'score':>6}  {'label':<20}  {'modality':<8}  uri")
        for row in labelled.as_json():
            label, uri = shown(row["label"]), shown(row["uri"])
            typer.echo(f"{row['id']:>6}  {row['score']:>6.3f}  {label:<20}  {row['modality']:<8}  {uri}")
    note_random_weights(collection)
