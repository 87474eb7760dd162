"""Options as objects: what a search asks for (``SearchOptions``) and how a run indexes (``IndexOptions``).

Each face (the CLI, the HTTP API, Python keywords) builds one of these once, at its edge, and hands it on
whole; the layers below read fields, never re-declare or re-validate them. Defaults are written here and
nowhere else: the CLI's option defaults and the server's form defaults are these class attributes.
Validation happens in ``__post_init__``, so a bad value fails in one place with the argument it is about
(``UsageError.argument``), before any model loads or database is touched.

Adding a search option: one field here, with its check and its ``Spelling`` (help, bounds, CLI flags);
the CLI (``cli/app.py`` ``option_flags``), the HTTP form (``xsearch/server/forms.py``) and the MCP tools
derive their parameters from the fields, and the engine reads it from the object.

Light on purpose (no torch, lancedb or faiss): ``xsearch --help`` imports this module.

Example
-------
>>> SearchOptions(target="image,audio", k=5).target
(Modality('image'), Modality('audio'))
>>> SearchOptions.of(SearchOptions(k=5), dedup=False).k
5
"""

from __future__ import annotations

import math
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

from xsearch.errors import UsageError
from xsearch.modalities import Modality, parse_modalities
from xsearch.moments import MomentCfg

DEFAULT_K = 10


def absolute_glob(pattern: str, cwd: str | os.PathLike | None = None) -> str:
    """A path glob as it matches stored (absolute) paths: ``~`` expanded, a relative one taken from ``cwd``
    (default: the current folder); one that starts with a wildcard is left as it is (``*/2024/*``)."""
    pattern = os.path.expanduser(pattern)
    if _anchored(pattern):
        return pattern
    return os.path.join(os.fspath(cwd) if cwd is not None else os.getcwd(), pattern)


def _anchored(pattern: str) -> bool:
    """Whether a path glob means the same from any folder: absolute, an object URI, or a leading wildcard."""
    return os.path.isabs(pattern) or "://" in pattern or pattern[:1] in ("*", "?", "[")


def served_glob(pattern: str | None) -> str | None:
    """A path glob sent by a client of a server: one that means the same from any folder. A relative one
    (or ``~``) would be read against the server's own folder and home, which the client cannot see: refused."""
    if pattern is None or not pattern.strip() or _anchored(pattern):
        return pattern
    raise UsageError(
        f"path {pattern!r}: give an absolute glob (/photos/2024/*) or one starting with a wildcard (*/2024/*); a "
        "relative one would be read from the server's own folder",
        argument="path",
    )


def served(values: Mapping[str, object]) -> dict:
    """Option values as a server takes them from a client (an HTTP form, an MCP call): a ``path`` glob must
    mean the same from any folder (``served_glob``)."""
    values = dict(values)
    if "path" in values:
        values["path"] = served_glob(values["path"])
    return values


def exclude_glob(pattern: str) -> str:
    """An ``exclude`` pattern as the scanner matches it: one without a path separator matches file and folder
    names anywhere (``*.tmp``, ``broken``); one with a separator is a path glob, relative ones taken from the
    current folder as ``SearchOptions.path`` takes them (``broken/*`` is ``$PWD/broken/*``)."""
    return absolute_glob(pattern) if "/" in pattern or os.sep in pattern or pattern.startswith("~") else pattern


def item_key(key: int | str) -> int | str:
    """How a user names a stored item: an id (an int, or ASCII digits: ``"²"`` is a digit to Python, not an
    id) or a path (anything else)."""
    if isinstance(key, str) and key.strip().isascii() and key.strip().isdigit():
        digits = key.strip().lstrip("0") or "0"
        return int(digits) if len(digits) <= 19 else str(key)  # above any id (int64), not a number to parse
    return int(key) if isinstance(key, int) or hasattr(key, "__index__") else str(key)


def _targets(value) -> tuple[Modality, ...] | None:
    """``None``/``"all"``: every modality the database holds; else the named ones, in order."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return None
    try:
        return tuple(parse_modalities([value] if isinstance(value, Modality) else value))
    except UsageError as exc:
        raise exc.for_argument("target") from None


def _at_least_one(value, argument: str, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UsageError(f"{argument} must be a whole number of at least 1 ({what}), got {value!r}", argument=argument)


def _finite(value, argument: str) -> None:
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise UsageError(f"{argument} must be a finite number, got {value!r}", argument=argument)


SORTS = ("relevance", "date", "-date")


def parse_near(value) -> tuple[float, float, float]:
    """``"48.85,2.35,10"`` or ``(48.85, 2.35, 10)`` -> ``(latitude, longitude, km)``, each checked."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        latitude, longitude, km = (float(part) for part in parts)
    except (TypeError, ValueError):
        raise UsageError(
            f"near {value!r}: expected LATITUDE,LONGITUDE,KM (e.g. 48.85,2.35,10)", argument="near"
        ) from None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180 and 0 < km <= 20_040):
        raise UsageError(
            f"near {value!r}: latitude -90..90, longitude -180..180 and a distance above 0 km", argument="near"
        )
    return latitude, longitude, km


@dataclass(frozen=True)
class Spelling:
    """How an option is given at the edges (a CLI flag, an HTTP form field, an MCP tool parameter), said once
    beside its field: each edge derives its parameter from this and the field's name, type and default.

    ``text``: given as text and parsed by the options class (``"image,audio"``, ``"48.85,2.35,10"``).
    ``shown``: the default the edges show, when it is not the field's (``"all"`` for ``None``).
    ``minimum``: checked by the edges' parsers too, so that ``--help`` and the API's schema say it.
    ``most``: a served edge's bound (what one request may ask of a shared server; the library has none).
    ``flags``: the CLI's spelling, when not ``--name`` (``-k``; a switch with no ``--no-`` form).
    ``choices``: the accepted words, for an edge's schema (the options class checks them).
    """

    help: str
    text: bool = False
    shown: object = None
    minimum: int | None = None
    most: int | None = None
    flags: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()


def spelled(default, help: str, **how):
    """A dataclass field with its ``Spelling`` at the edges."""
    return field(default=default, metadata={"spelling": Spelling(help, **how)})


@dataclass(frozen=True)
class EdgeField:
    """One option as an edge declares it: its name, the type the edge accepts, the default it shows and its
    ``Spelling``."""

    name: str
    type: object
    default: object
    spelling: Spelling


def edge_fields(cls, only: Sequence[str] | None = None) -> list[EdgeField]:
    """``cls``'s spelled fields (all, or ``only`` these, in that order), as the edges declare them."""
    hints = typing.get_type_hints(cls)
    found = {}
    for f in fields(cls):
        spelling = f.metadata.get("spelling")
        if spelling is None:
            continue
        kind = hints[f.name]
        if spelling.text:
            kind = str if spelling.shown is not None else str | None
        default = spelling.shown if spelling.shown is not None else f.default
        found[f.name] = EdgeField(f.name, kind, default, spelling)
    if only is None:
        return list(found.values())
    unknown = sorted(set(only) - set(found))
    if unknown:
        raise TypeError(f"{cls.__name__} has no spelled option {unknown[0]!r}")
    return [found[name] for name in only]


@dataclass(frozen=True)
class Selection:
    """Which stored items a search or a classification looks at.

    ``target``: the modalities (``"image,audio"``, a ``Modality``, a list; ``None`` or ``"all"``: every one
    the database holds). ``where``: a Lance SQL predicate on the items (``"width >= 1024"``). ``path``: a
    glob on the file path, made absolute here (``"photos/*"`` from the current folder, ``~`` expanded;
    ``"*/2024/*"`` as it is); a server refuses a relative one first (``served_glob``).
    """

    target: tuple[Modality, ...] | None = spelled(
        None, "Modalities to search: image,audio,... or all.", text=True, shown="all"
    )
    where: str | None = spelled(None, 'Lance SQL filter on items, e.g. "width >= 1000".')
    path: str | None = spelled(None, "Glob on the file path, e.g. '*/2024/*'.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", _targets(self.target))
        if self.where is not None and not self.where.strip():
            object.__setattr__(self, "where", None)
        if self.path is not None:
            object.__setattr__(self, "path", absolute_glob(self.path) if self.path.strip() else None)

    @classmethod
    def of(cls, options=None, /, **overrides):
        """``options`` (default: the defaults) with ``overrides`` by field name: the Python keywords' edge."""
        return _overridden(cls, options, overrides)


@dataclass(frozen=True)
class SearchOptions(Selection):
    """What one search asks for, besides the query itself: a ``Selection`` (``target``, ``where``, ``path``)
    and how many hits, cut and ordered how.

    Cut-offs, all off by default: ``min_score`` (raw cosine), ``min_calibrated`` (comparable across
    modalities), ``autocut`` (keep what comes before the N-th jump). ``dedup``: files with the same bytes
    come back once (the query's own item, else the first indexed copy, stands for them). A stored item in
    the query (``Query.item``) leads the results, with its copies, whatever the cut-offs;
    ``exclude_query_items`` leaves them out instead ("more like this", not "this"). ``moments``: return
    moments of audio and video files (``xsearch.moments``) instead of files, at most ``per_file`` of each
    file (default 1); ``where`` then filters moment columns (``start``, ``end``, ``uri``, ``modality``).
    ``near``: ``(latitude, longitude, km)``, files taken within ``km`` of that place (``xsearch.capture``).
    ``sort``: ``"relevance"`` (default), ``"date"`` or ``"-date"`` (newest first), applied after the
    cut-offs, so that only relevant hits are ordered by when they were taken (undated ones last); ``rank``
    stays each hit's place by relevance.
    """

    k: int = spelled(DEFAULT_K, "Number of results.", minimum=1, most=1000, flags=("-k", "--k"))
    min_score: float | None = spelled(None, "Drop hits below this raw cosine.")
    min_calibrated: float | None = spelled(
        None, "Drop hits below this calibrated score (comparable across modalities)."
    )
    autocut: int | None = spelled(
        None, "Keep the hits before the N-th jump in the scores (1: the top group).", minimum=1
    )
    dedup: bool = spelled(True, "Files with the same bytes come back once, listing the others.")
    exclude_query_items: bool = spelled(
        False,
        "Leave out the stored items of the query themselves (they lead the results otherwise).",
        flags=("--exclude-query-items",),
    )
    moments: bool = spelled(
        False, "Find moments of audio and video (index --moments): file @ start-end.", flags=("--moments",)
    )
    per_file: int | None = spelled(
        None, "With moments: at most this many moments of one file (default 1).", minimum=1, most=1000
    )
    near: tuple[float, float, float] | None = spelled(
        None, "LAT,LON,KM: files taken within KM of that place (photos' GPS tags).", text=True
    )
    sort: str = spelled(
        "relevance", "relevance, date or -date (newest first): the order of the hits the cut-offs keep.", choices=SORTS
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sort not in SORTS:
            raise UsageError(f"sort must be one of {', '.join(SORTS)}, got {self.sort!r}", argument="sort")
        if isinstance(self.near, str) and not self.near.strip():
            object.__setattr__(self, "near", None)
        if self.near is not None:
            object.__setattr__(self, "near", parse_near(self.near))
            if self.moments:
                raise UsageError("near filters files by where they were taken, not moments", argument="near")
        _at_least_one(self.k, "k", "results")
        _at_least_one(self.per_file, "per_file", "moments per file")
        if self.per_file is not None and not self.moments:
            raise UsageError("per_file counts moments: give it with moments", argument="per_file")
        _at_least_one(self.autocut, "autocut", "jumps")
        _finite(self.min_score, "min_score")
        _finite(self.min_calibrated, "min_calibrated")


LABEL_SORTS = ("id", "score")


@dataclass(frozen=True)
class ClassifyOptions(Selection):
    """What a classification reports, besides its labels: a ``Selection`` of the items to label, a floor on
    the confidence (``min_confidence``, a probability) and the order (``"id"``, or ``"score"``: most
    confident first)."""

    min_confidence: float | None = spelled(None, "Only items labelled with at least this probability.")
    sort: str = spelled("id", "Order: id (item) or score (most confident first).", choices=LABEL_SORTS)

    def __post_init__(self) -> None:
        super().__post_init__()
        _finite(self.min_confidence, "min_confidence")
        if self.sort not in LABEL_SORTS:
            raise UsageError(f"sort must be id or score, got {self.sort!r}", argument="sort")


# With a filter, up to this many matching items are scored exactly; above it the ANN index is over-fetched.
EXACT_FILTER_LIMIT = 200_000


@dataclass(frozen=True)
class EngineSettings:
    """How a collection runs its searches (never what they find): what it keeps in memory and where.

    ``hold_rows``: keep each version's small columns (paths, hashes, metadata) in memory, read once in the
    background, so a hit's row is not read from disk (``xsearch.store.resident``; for a process that answers
    many searches: ``serve`` and ``mcp`` hold them). ``exact_device``: keep each modality's vectors on this
    device (a GPU) and answer exactly where they fit ``exact_budget_bytes`` (default: half its free memory);
    past it, the FAISS index proposes candidates and the device re-ranks them. ``exact_filter_limit``: a
    filter matching up to this many items is scored exactly; more, and the index is over-fetched.
    """

    hold_rows: bool = False
    exact_device: str | None = None
    exact_budget_bytes: int | None = None
    exact_filter_limit: int = EXACT_FILTER_LIMIT

    def __post_init__(self) -> None:
        _at_least_one(self.exact_filter_limit, "exact_filter_limit", "items")
        if self.exact_budget_bytes is not None and self.exact_budget_bytes < 0:
            raise UsageError(f"exact_budget_bytes must be 0 or more, got {self.exact_budget_bytes}")


@dataclass(frozen=True)
class ScanOptions:
    """Which files a run takes: modalities kept, globs excluded, links followed, folders assigned."""

    modalities: frozenset[Modality] | None = None  # None: all
    exclude: tuple[str, ...] = ()  # name globs (no separator) and absolute path globs: see ``exclude_glob``
    follow_symlinks: bool = False
    hidden: bool = False  # take files and folders whose names start with a dot (below the paths given)
    assigned: Mapping[str, Modality] = field(default_factory=dict)  # absolute path -> modality (--as)


@dataclass(frozen=True)
class DecodeLimits:
    """What one file may cost a decode worker."""

    seconds: float = 600.0  # per file
    memory_bytes: int | None = None  # per worker, above its footprint at start; None: a share of the RAM


@dataclass(frozen=True)
class IndexOptions:
    """How a run indexes: which files (``scan``), how they are decoded (``limits``, ``workers``), batched,
    committed, and where (``ray``: a cluster's address, ``"auto"`` or ``"local"``)."""

    scan: ScanOptions = ScanOptions()
    limits: DecodeLimits = DecodeLimits()
    batch_size: int | None = None  # files per model batch; None: 16 on a CPU, sized per tower on a GPU
    workers: int | None = None  # decode processes; None: one per core but one (at most 8 on a CPU); 0: in-process
    commit_every: int = 256  # files per store commit
    commit_seconds: float = 30.0  # ... or sooner when this long has passed since the last one
    prune: bool = False  # delete rows of files under the scanned roots that no longer exist
    update_index: bool = True
    progress: bool = False  # tqdm bars on stderr
    ray: str | None = None
    ray_actors: int | None = None  # encoder actors on the cluster; None: one per node or GPU
    ray_stall_seconds: float = 600.0  # a cluster run with no file back for this long stops (a node lost?)
    gpu_decode: bool | None = None  # JPEGs decoded in batches on the encoder's device; None: when it is a GPU
    moments: MomentCfg | None = None  # keep moments cut so (``xsearch.moments``); None: as the database says
    refresh_metadata: bool = False  # re-read unchanged pictures' and videos' capture tags (``xsearch.capture``)
    retry: bool = False  # decode again files whose moments failed for the same bytes (else left until they change)

    def __post_init__(self) -> None:
        _at_least_one(self.batch_size, "batch_size", "files per batch")
        _at_least_one(self.commit_every, "commit_every", "files per commit")
        _at_least_one(self.ray_actors, "ray_actors", "encoder actors")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 0):
            raise UsageError(f"workers must be 0 or more, got {self.workers!r}", argument="workers")
        if self.workers == 0 and self.limits != DecodeLimits():
            raise UsageError(
                "file_timeout and worker_memory_gb bound decode workers; with workers=0 files are decoded in this "
                "process, without them (give workers=1 or more)",
                argument="workers",
            )
        if self.moments is not None and self.ray is not None:
            raise UsageError("moments are indexed on this machine: leave out --ray with --moments", argument="ray")
        if not (isinstance(self.ray_stall_seconds, (int, float)) and self.ray_stall_seconds > 0):
            raise UsageError(
                f"ray_stall_seconds must be above 0, got {self.ray_stall_seconds!r}", argument="ray_stall_seconds"
            )
        if not self.limits.seconds > 0:
            raise UsageError(
                f"file_timeout must be above 0 seconds, got {self.limits.seconds}", argument="file_timeout"
            )

    @classmethod
    def of(cls, options: IndexOptions | None = None, /, **overrides) -> IndexOptions:
        """``options`` with ``overrides`` by field name, or by the flat names the CLI and ``Collection.index``
        use for the parts: ``modalities``, ``exclude``, ``follow_symlinks``, ``hidden``, ``assign`` (scan),
        ``file_timeout``, ``worker_memory_gb`` (limits), ``moments=True``, ``moment_seconds``,
        ``moment_stride`` (a ``MomentCfg``)."""
        options = options or cls()
        cut = {k: overrides.pop(k) for k in ("moment_seconds", "moment_stride") if k in overrides}
        cut = {k.removeprefix("moment_"): v for k, v in cut.items() if v is not None}
        wanted = overrides.get("moments")
        if cut and wanted is not True and not isinstance(wanted, MomentCfg):
            given = " and ".join(f"moment_{k} (--moment-{k})" for k in cut)
            raise UsageError(f"{given} only say how moments are cut: ask for moments too (--moments)")
        if wanted is True:
            overrides["moments"] = MomentCfg(**cut)
        elif wanted is False:
            overrides["moments"] = None
        scan = {k: overrides.pop(k) for k in ("modalities", "exclude", "follow_symlinks", "hidden") if k in overrides}
        if "assign" in overrides:
            scan["assigned"] = assignments(overrides.pop("assign") or {})
        if scan.get("modalities") is not None:
            scan["modalities"] = frozenset(_parsed(scan["modalities"], "modalities"))
        if "exclude" in scan:
            scan["exclude"] = tuple(exclude_glob(g) for g in scan["exclude"] or ())
        limits = {}
        if "file_timeout" in overrides:
            limits["seconds"] = float(overrides.pop("file_timeout"))
        if "worker_memory_gb" in overrides:
            gb = overrides.pop("worker_memory_gb")
            limits["memory_bytes"] = int(gb * (1 << 30)) if gb else None
        if scan:
            overrides["scan"] = replace(overrides.get("scan", options.scan), **scan)
        if limits:
            overrides["limits"] = replace(overrides.get("limits", options.limits), **limits)
        return _overridden(cls, options, overrides)


def _overridden(cls, options, overrides: dict):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"{cls.__name__} has no option {unknown[0]!r} (options: {', '.join(sorted(known))})")
    return replace(options if options is not None else cls(), **overrides)


def _parsed(value, argument: str) -> list[Modality]:
    try:
        return parse_modalities(value)
    except UsageError as exc:
        raise exc.for_argument(argument) from None


def real_path(path: str | os.PathLike) -> str:
    """The absolute path with links resolved: a root reached through a link (``/mnt/photos`` ->
    ``/data/photos``) gives its files the same uris as its target. An object URI is kept as given."""
    from xsearch.sources import absolute

    return absolute(path)


def assignments(assign: Mapping[str | os.PathLike, Modality | str] | Sequence) -> dict[str, Modality]:
    """``{path: modality}`` (``--as MODALITY=PATH``) with real paths and checked modality names."""
    out = {}
    for path, modality in dict(assign).items():
        try:
            out[real_path(path)] = Modality(modality)
        except UsageError as exc:
            raise exc.for_argument("assign") from None
    return out


@dataclass
class BindOptions:
    """How ``bind`` trains (``xsearch bind``'s options)."""

    name: str
    pairs: str
    anchor: str
    features: str | None = None  # None: RAW for .npy files, else the tower that reads the files' kind
    holdout: float = 0.1
    epochs: int = 300
    patience: int = 40
    batch_size: int | None = None  # default: a twelfth of the training pairs, from 32 to 256
    learning_rate: float = 1e-3
    hidden: int | None = None  # default: 2048 for a projector, 1024 for a raw encoder
    seed: int = 0
    replace: bool = False
    progress: bool = True
