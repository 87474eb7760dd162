"""``Collection``: one xsearch database and the model that fills and queries it. The library's entry point.

Every job a user has is one method: ``index`` (folders -> database, incrementally), ``search``,
``classify``, ``embed``, ``info``, ``errors``, ``item``. Every face (the CLI's commands, ``serve``'s
routes, the MCP tools) builds its options once (``IndexOptions``, ``SearchOptions``, ``ClassifyOptions``,
``ModelChoice``), calls one of these and presents the answer.
Arguments are checked before anything is loaded or written: a misspelt modality or model name fails in
milliseconds and leaves no database behind.

This module sits on top of the library: it is the one place in ``xsearch`` that reaches into the batch
indexer (``xsearch.indexer``): ``index`` runs it and ``embed`` walks folders with its scanner, both imported
when first used. Searches never import it: their query files are decoded by ``xsearch.decode``'s
supervised worker pool (``_QueryDecoder``), as indexed files are.

Example
-------
>>> from xsearch import Collection, Query
>>> media = Collection.open("media.db")  # doctest: +SKIP
>>> media.index(["~/Pictures", "~/Sounds"], assign={"~/scans": "depth"}, workers=4)  # doctest: +SKIP
>>> media.search(Query.audio("rain.wav"), target="image", k=10).to_pandas()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from xsearch.bind.binding import register_bindings
from xsearch.errors import ItemNotFound, UsageError
from xsearch.modalities import BUILT_IN, Modality
from xsearch.model.choice import DEFAULT_ARCHITECTURE, ModelChoice
from xsearch.objects import is_object_uri, location
from xsearch.options import (
    ClassifyOptions,
    DecodeLimits,
    EngineSettings,
    IndexOptions,
    ScanOptions,
    SearchOptions,
    item_key,
    real_path,
)
from xsearch.paths import is_under, modality_of_path
from xsearch.placement import Placement
from xsearch.sources import media_exists

log = logging.getLogger(__name__)

DEFAULT_MODEL = DEFAULT_ARCHITECTURE


class Collection:
    """A database directory plus the model that fills and queries it.

    The model arguments (``checkpoint``, ``model``: an architecture name, ``device``, ``precision``,
    ``verify_checkpoint``) are folded into one ``ModelChoice`` here, or given whole as ``choice``. The
    model is the one asked for, else the one the database was made with, else ``imagebind_huge``; it loads
    on first need (a search of stored items never needs it). Pass ``encoder`` to use one already loaded.
    ``path=None`` is a collection without a database: only ``embed`` works. ``query_limits``: query files
    are decoded in a supervised worker under these limits, as indexed files are (``None``: in this
    process). ``settings``: how searches run (``EngineSettings``: rows held in memory, an exact-search
    device; ``serve`` sets both).
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        *,
        checkpoint: str | os.PathLike | None = None,
        model: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        verify_checkpoint: bool = False,
        choice: ModelChoice | None = None,
        encoder=None,
        index_cfg=None,
        query_limits: DecodeLimits | None = DecodeLimits(),
        settings: EngineSettings = EngineSettings(),
    ):
        self.path = location(path) if path is not None else None  # a folder, or an object URI (s3://...)
        self.choice = choice or ModelChoice(checkpoint, model, device, precision, verify_checkpoint)
        self._encoder = encoder
        self._injected_encoder = encoder is not None
        self._index_cfg = index_cfg
        self.query_limits = query_limits
        self.settings = settings
        self._store = None
        self._engine = None
        self._making = threading.RLock()  # the encoder and the engine are made once, by one thread

    @classmethod
    def open(cls, path: str | os.PathLike | None, **kwargs) -> Collection:
        """The collection at ``path``; nothing is read until a method needs it (``index`` creates it)."""
        return cls(path, **kwargs)

    def close(self) -> None:
        """Let go of the model, the indices and the database handles (a later call loads them again); an
        encoder passed in is the caller's and is kept."""
        if self._engine is not None:
            self._engine.close()
        self._engine = None
        self._store = None
        if not self._injected_encoder:
            self._encoder = None

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        model = self._encoder.model_id if self._encoder is not None else self.choice.model_id or "from the database"
        state = "" if self.exists() else ", not created yet"
        return f"Collection({str(self.path)!r}, model={model!r}{state})"

    # ---- what it is made of -----------------------------------------------------------------------------

    def exists(self) -> bool:
        from xsearch.store import META, SideFiles

        return self.path is not None and SideFiles.at(self.path).exists(f"{META}.lance")

    @property
    def store(self):
        """The database (``StoreError`` when there is none yet: ``index`` creates it)."""
        if self.path is None:
            raise UsageError("this collection has no database (give its path)", argument="db")
        if self._store is None:
            from xsearch.store import Database

            self._store = Database.open(self.path, create=False)
        return self._store

    def bound_modalities(self) -> list[Modality]:
        """The modalities the database binds (``xsearch bind``), registered in this process for queries to name."""
        if self.path is None or not self.exists():
            return []
        return register_bindings(self.store.files, self.store.model_id)

    @property
    def model_name(self) -> str:
        """The model id of the embeddings: the loaded encoder's, the one asked for, the database's, or the
        default (``imagebind_huge``)."""
        return self._known_model() or DEFAULT_MODEL

    def _known_model(self) -> str | None:
        if self._encoder is not None:
            return self._encoder.model_id
        if self.choice.model_id is not None:
            return self.choice.model_id
        return self.store.model_id if self.exists() else None

    @property
    def random_weights(self) -> bool:
        """Whether the database holds embeddings of a random-weights trial model (meaningless results)."""
        from xsearch.model.config import is_random_weights

        return is_random_weights(self.model_name)

    def model_choice(self) -> ModelChoice:
        """The model this collection loads: the choice made, fitted to the database's model (a different
        model asked for is a ``ModelMismatchError``, before anything loads)."""
        held = self.store.model_id if self.exists() else None
        return self.choice.for_database(held, self.path)

    @property
    def encoder(self):
        """The encoder, loaded on first use."""
        with self._making:  # serve's threads: one load
            if self._encoder is None:
                self._encoder = self.model_choice().load()
        return self._encoder

    @property
    def engine(self):
        with self._making:
            return self._engine or self._make_engine()

    def _make_engine(self):
        if self._engine is None:
            from xsearch.query.engine import Engine

            self.bound_modalities()  # before a query or a target names one

            decoder = None if self.query_limits is None else _QueryDecoder(self.query_limits)
            self._engine = Engine(
                self.store,
                lambda: self.encoder,
                self._index_cfg,
                decoder=decoder,
                settings=self.settings,
            )
        return self._engine

    # ---- jobs -------------------------------------------------------------------------------------------

    def index(self, paths: Sequence[str | os.PathLike], options: IndexOptions | None = None, **overrides):
        """Index files and folders: scan, decode in parallel, embed in batches, store, update the indices.

        ``options`` (an ``IndexOptions``; its fields say what each does) and keyword ``overrides`` say how:
        ``assign`` maps folders or files to a modality (``{"scans/": "depth"}``; assigned paths outside
        ``paths`` are indexed too), ``ray`` decodes and embeds on a Ray cluster, ``moments=True`` also keeps
        a vector per segment of every audio and video file. Returns the ``RunReport``: counts, failures
        with reasons, index sizes.
        """
        started = time.perf_counter()
        self.bound_modalities()  # before the options name them
        options = IndexOptions.of(options, **overrides)
        # Real paths: a root reached through a link (/mnt/photos -> /data/photos) is the same files as its
        # target, and must give them the same uris, or indexing both would store every file twice.
        roots = [real_path(p) for p in paths]
        assigned = list(options.scan.assigned)
        # A typo or an unmounted drive: when no root is there, nothing is done or recorded; when some are, the
        # others are indexed and each missing one is a failure of the run (its rows are kept, never pruned).
        for named, argument in ((roots, "paths"), (assigned, "assign")):
            missing = [p for p in named if not media_exists(p)]
            if missing and (argument == "assign" or len(missing) == len(named)):
                raise UsageError(f"no such file or folder: {', '.join(missing)}", argument=argument)
        roots += [p for p in assigned if not any(is_under(p, root) for root in roots)]  # outside PATHS
        if not roots:
            raise UsageError("nothing to index: give folders or files", argument="paths")
        if self.path is None:
            raise UsageError("indexing needs a database (give its path)", argument="db")
        if self._encoder is None:  # another model than the database's, a bad device or precision: fails here
            placement = self.model_choice().placement(options.gpu_decode)
        else:
            placement = Placement.around(self._encoder.device, self._encoder.precision, options.gpu_decode)
        from xsearch.store import writer_lock

        loading = _Loading(self, options.progress)
        existed = self.exists()
        if not existed or options.ray is not None:
            loading()  # a new database takes its width from the model; a cluster ships it
        if not existed and not is_object_uri(self.path):
            from xsearch.store.opening import refuse_a_foreign_folder

            refuse_a_foreign_folder(self.path)  # before the lock leaves its file in someone's photo folder
        before = time.perf_counter()
        with writer_lock(self.path):  # one writer per database, taken before the model loads
            locked = time.perf_counter()
            if options.ray is None:
                from xsearch.indexer.pipeline import Indexer

                # The model loads only if some file needs decoding: a run with nothing new never loads it.
                store = self._open_for_writing(None if loading.seconds is None else self.encoder)
                opened = time.perf_counter()
                report = Indexer(store, loading, options, placement).run(roots)
            else:
                store = self._open_for_writing(self.encoder)
                opened = time.perf_counter()
                report = self._index_on_ray(options, store, self.encoder, roots)
        log.info("writer lock: %.2f s, opening the database: %.2f s", locked - before, opened - locked)
        report.phases = {"writer lock": locked - before, "open database": opened - locked, **report.phases}
        report.load_seconds = loading.seconds or 0.0
        report.seconds = time.perf_counter() - started  # the whole run, model loading included
        return report

    def _index_on_ray(self, options, store, encoder, roots):
        import ray

        from xsearch.indexer.cluster import RayIndexer, connect

        started_here = connect(options.ray)
        try:
            # Nodes load the weights from the same recipe (each picks its own device); a given encoder ships as is.
            source = None if self._injected_encoder else replace(self.model_choice(), device="auto").load
            return RayIndexer(store, encoder, options, encoder_source=source).run(roots)
        finally:
            if started_here:
                ray.shutdown()

    def search(self, query, options: SearchOptions | None = None, **overrides):
        """The items nearest to ``query`` (a ``Query``, or a text: ``"a dog barking"``), best first: ``Results``.

        ``options`` (a ``SearchOptions``) and keyword ``overrides`` say what to search: ``target``
        modalities (default: all; several are merged by calibrated score), ``k``, ``where``, ``path``,
        the cut-offs ``min_score``, ``min_calibrated``, ``autocut``, ``dedup``, and ``moments=True`` (hits
        are moments of audio and video, with ``start`` and ``end``; at most ``per_file`` of each file).
        """
        return self.engine.search(query, options, **overrides)

    def embed(
        self,
        paths: Sequence[str | os.PathLike],
        modality: Modality | str | None = None,
        *,
        assign: Mapping[str | os.PathLike, Modality | str] | None = None,
        thumbnails: bool = False,
    ):
        """Embed files with this collection's model by the indexer's rules: one ``Outcome`` per file, in
        order, with ``embedding`` or ``error`` (``message``: path and reason). A folder stands for the files
        ``index`` would take from it (sorted, by the same rules). ``modality`` names the modality of all;
        ``assign`` maps folders or files to one, as ``index`` takes it (``{"scans/": "depth"}``)."""
        self.bound_modalities()  # before the arguments name them
        try:
            modality = Modality(modality) if modality else None  # a typo fails before the model loads
        except UsageError as exc:
            raise exc.for_argument("modality") from None
        assigned = IndexOptions.of(assign=assign or {}).scan.assigned
        from xsearch.decode import Decoded, Outcome, decode
        from xsearch.indexer.scan import Scanner, Task

        entries: list[tuple[str, Modality | None] | Decoded] = []  # a file to embed, or a scan's refusal
        for path in map(os.fspath, paths):
            if is_object_uri(path) or not os.path.isdir(path):
                entries.append((path, modality or (modality_of_path(real_path(path), assigned) if assigned else None)))
                continue
            rules = {**assigned, real_path(path): modality} if modality else assigned
            for found in Scanner(ScanOptions(assigned=rules)).scan([path]):
                if isinstance(found, Task):
                    entries.append((found.path, found.modality))
                else:
                    entries.append(Decoded(found.uri, found.modality).fail("scan", found.message))
        if not any(isinstance(e, tuple) for e in entries):
            return [Outcome.of(refused) for refused in entries]  # nothing to decode: no model needed
        encoder = self.encoder
        files = [e if isinstance(e, Decoded) else decode(*e, encoder.preprocess, thumbnail=thumbnails) for e in entries]
        return encoder.encode_decoded(files)

    def item(self, key: int | str, columns: Sequence[str]) -> dict:
        """One stored item's ``columns``, by id or path (``ItemNotFound`` when it is not indexed)."""
        row = self.store.items().lookup(item_key(key), columns)
        if row is None:
            raise ItemNotFound(key, self.path)
        return row

    @staticmethod
    def random_checkpoint(path: str | os.PathLike, architecture: str = "tiny_test", seed: int = 0) -> Path:
        """Write a checkpoint of random weights, for trying xsearch without the real weights: everything
        runs, the results mean nothing, and every database made with it says so."""
        from xsearch.model import save_random_checkpoint

        return save_random_checkpoint(path, architecture, seed)

    def classify(
        self,
        labels: Sequence[str] | None = None,
        options: ClassifyOptions | None = None,
        *,
        examples: str | os.PathLike | Mapping[str, Sequence] | None = None,
        text_weight: float = 0.0,
        **overrides,
    ):
        """Each item's most likely label and its probability: ``Labels`` (rows of ``id, uri, modality, label,
        score``; ``to_arrow``, ``to_pandas``, ``as_json``).

        Zero-shot from ``labels`` (texts), or few-shot from ``examples``: a folder whose subfolders are the
        labels and hold a few example files each (any modality), or ``{label: [files]}``. A label's prototype
        is the mean of its examples' unit vectors, blended with its text's embedding by ``text_weight``.
        ``options`` (a ``ClassifyOptions``) and keyword ``overrides`` say which items (``target``,
        ``where``, ``path``, as a search selects them), which labels are kept (``min_confidence``) and their
        order (``sort``: ``"id"`` or ``"score"``).
        """
        from xsearch.query import classify as labelling

        engine = self.engine  # the database's bound modalities first: a target may name one
        options = ClassifyOptions.of(options, **overrides)
        if (labels is None) == (examples is None):
            raise UsageError("give either labels (zero-shot) or examples (few-shot)", argument="labels")
        targets = engine.targets(options.target)
        encoder = engine.encoder
        if labels is not None:
            names = labelling.clean_labels(labels)
            prototypes = encoder.encode_text(names).numpy()
        else:
            names, prototypes = labelling.example_prototypes(self.embed, encoder, examples, text_weight)
        with self.store.leased() as snapshot:  # a writer's compaction keeps what is read here
            labelled = labelling.classify(snapshot.items, prototypes, names, targets, options)
        return labelled.filtered(options.min_confidence).sorted(options.sort)

    def info(self, check: bool = True) -> dict:
        """Counts per modality, model id, index kind and freshness, errors, size on disk.

        ``check`` reads every stored row first (a damaged data file raises ``DatabaseDamaged``), so the
        counts it reports are of data that can be read, and every index file against its checksum.
        """
        return _facts(self.store, check)

    def errors(self):
        """The files that could not be indexed: an Arrow table ``uri, modality, stage, message, at``."""
        return self.store.error_rows().sort_by("uri")

    # ---- helpers ----------------------------------------------------------------------------------------

    def _open_for_writing(self, encoder):
        """The database, opened to write (created with the encoder's model id and width when new)."""
        from xsearch.store import Database

        if encoder is None:
            held = Database.open(self.path, create=False).model_id
            self._store = Database.open(self.path, model_id=held)  # a writer: brings new columns in
        else:
            self._store = Database.open(self.path, model_id=encoder.model_id, embed_dim=encoder.embed_dim)
        self._engine = None
        return self._store


def _facts(store, check: bool) -> dict:
    """``Collection.info`` of the database ``store``."""
    with store.leased() as snapshot:  # a writer's compaction keeps what is read here
        return _facts_of(store, snapshot, check)


def _facts_of(store, snapshot, check: bool) -> dict:
    from xsearch.store import ITEMS, MOMENTS

    checked = store.check(snapshot) if check else None
    items = snapshot.items
    counts, index_facts = _counts_and_indices(store, items, ITEMS, check)
    moments = None
    if snapshot.moments is not None:
        cut = store.moment_cfg()
        by_modality, moment_indices = _counts_and_indices(store, snapshot.moments, MOMENTS, check)
        moments = {
            "moments": sum(by_modality.values()),
            "seconds": cut.seconds if cut else None,
            "stride": cut.stride if cut else None,
            "by_modality": by_modality,
            "indices": moment_indices,
        }
    size = store.files.total_bytes()
    precisions: dict[str, int] = {}
    if items.has_column("precision"):  # databases written before it was recorded: "unknown"
        import pyarrow.compute as pc

        column = items.scan(["precision"])["precision"].fill_null("unknown").combine_chunks()
        precisions = {r["values"]: r["counts"] for r in pc.value_counts(column).to_pylist()}
    elif counts:
        precisions["unknown"] = sum(counts.values())
    return {
        "db": str(store.path),
        "model_id": store.model_id,
        "precision": precisions,
        "items": sum(counts.values()),
        "by_modality": counts,
        "errors": store.errors().count(),
        "indices": index_facts,
        "moments": moments,
        "bytes": size,
        "rows_read": checked,
    }


def _counts_and_indices(store, view, table: str, check: bool) -> tuple[dict[str, int], dict[str, dict]]:
    """Rows per modality of a table view (items or moments) and the state of each modality's index."""
    from xsearch.index import IndexSet

    indices = IndexSet.over(store, view, table)
    counts = {m.value: view.count(m) for m in view.modalities()}
    facts = {}
    for name in counts:
        status = indices.status(Modality(name), check=check)
        facts[name] = {"kind": status.get("kind"), "count": status.get("count"), "fresh": status["fresh"]}
        if "damaged" in status:
            facts[name]["damaged"] = status["damaged"]
    return counts, facts


class _QueryDecoder:
    """Decodes a query file in a supervised worker (``xsearch.decode.pool``) under ``limits``: a file that
    crashes, hangs or overruns its memory costs that worker and comes back as an error. One pool for the
    collection's life (its fork server started once); a worker is forked for each file, in milliseconds."""

    def __init__(self, limits: DecodeLimits):
        self.limits = limits
        self._made: tuple | None = None  # (the model's preprocessing config, its pool), made on first need
        self._making = threading.Lock()

    def __call__(self, path: str, modality: Modality, cfg):
        from xsearch.decode.work import Task

        if modality.value not in BUILT_IN and modality.spec.binding is None:  # its workers would not know it
            from xsearch.decode import decode_query_file

            return decode_query_file(path, modality, cfg)
        return next(self._pool(cfg).imap_unordered([Task(path, modality, 0, 0.0)])).decoded

    def _pool(self, cfg):
        import functools

        from xsearch.decode.pool import DecodePool
        from xsearch.decode.work import prepare_query

        with self._making:  # pools run files side by side; this only makes one
            if self._made is None or self._made[0] is not cfg:
                self._made = (cfg, DecodePool(functools.partial(prepare_query, cfg=cfg), 1, self.limits))
            return self._made[1]


class _Loading:
    """The collection's encoder, loaded on the first call (with a "loading model" line beside the progress
    bars); ``seconds`` is how long that took, ``None`` until then."""

    def __init__(self, collection: Collection, progress: bool):
        self.collection, self.progress, self.seconds = collection, progress, None

    def __call__(self):
        if self.seconds is None:
            started = time.perf_counter()
            if self.progress and self.collection._encoder is None:
                from tqdm import tqdm

                tqdm.write(f"loading model {self.collection.model_choice().describe()} ...", file=sys.stderr)
            self.collection.encoder  # noqa: B018  (loads it)
            self.seconds = time.perf_counter() - started
        return self.collection.encoder
