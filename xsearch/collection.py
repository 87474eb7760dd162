"""``Collection``: one xsearch database and the model that fills and queries it. The library's entry point.

Every job a user has is one method: ``index`` (folders -> database, incrementally), ``search``,
``classify``, ``info``, ``errors``. The CLI's commands parse their options, call one of these and print.
Arguments are checked before anything is loaded or written: a misspelt modality or model name fails in
milliseconds and leaves no database behind.

This module sits on top of the library: it is the one place in ``xsearch`` that reaches into the batch
indexer (``indexer``), and only when ``index`` is called.

Example
-------
>>> from xsearch import Collection, Query
>>> media = Collection.open("media.db")  # doctest: +SKIP
>>> media.index(["~/Pictures", "~/Sounds"], assign={"~/scans": "depth"})  # doctest: +SKIP
>>> media.search(Query.audio("rain.wav"), target="image", k=10).to_pandas()  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from xsearch.errors import UsageError
from xsearch.modalities import Modality, is_under, parse_modalities

log = logging.getLogger(__name__)

DEFAULT_MODEL = "imagebind_huge"


class Collection:
    """A database directory plus how to load its model (checkpoint, architecture, device).

    The model is resolved as: ``model`` if given, else the architecture the database was made with, else
    ``imagebind_huge``; it loads on first need (a search of stored items never needs it). Pass ``encoder``
    to use one already loaded.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        checkpoint: str | os.PathLike | None = None,
        model: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        verify_checkpoint: bool = False,
        encoder=None,
        index_cfg=None,
    ):
        if model is not None:
            from xsearch.model.config import get_config

            get_config(model)  # a misspelt architecture fails now, not after a checkpoint download
        self.path = Path(path).expanduser()
        self._checkpoint, self._model, self._device = checkpoint, model, device
        self._precision, self._verify = precision, verify_checkpoint
        self._encoder = encoder
        self._injected_encoder = encoder is not None
        self._index_cfg = index_cfg
        self._store = None
        self._engine = None

    @classmethod
    def open(cls, path: str | os.PathLike, **kwargs) -> Collection:
        """The collection at ``path``; nothing is read until a method needs it (``index`` creates it)."""
        return cls(path, **kwargs)

    def close(self) -> None:
        """Let go of the model, the indices and the database handles (a later call loads them again)."""
        self._engine = None
        self._store = None
        if self._checkpoint is not None or self._model is not None:  # reloadable: drop the model too
            self._encoder = None

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        model = self._encoder.model_id if self._encoder is not None else self._model or "from the database"
        state = "" if self.exists() else ", not created yet"
        return f"Collection({str(self.path)!r}, model={model!r}{state})"

    # ---- what it is made of -----------------------------------------------------------------------------

    def exists(self) -> bool:
        from xsearch.store import META

        return (self.path / f"{META}.lance").exists()

    @property
    def store(self):
        """The database (``StoreError`` when there is none yet: ``index`` creates it)."""
        if self._store is None:
            from xsearch.store import Store

            self._store = Store.open(self.path, create=False)
        return self._store

    @property
    def model_name(self) -> str:
        """The model id of the embeddings: the loaded encoder's, the one asked for, the database's, or the
        default (``imagebind_huge``)."""
        return self._known_model() or DEFAULT_MODEL

    def _known_model(self) -> str | None:
        if self._encoder is not None:
            return self._encoder.model_id
        if self._model is not None:
            return self._model
        return self.store.model_id if self.exists() else None

    @property
    def random_weights(self) -> bool:
        """Whether the database holds embeddings of a random-weights trial model (meaningless results)."""
        from xsearch.model.config import is_random_weights

        return is_random_weights(self.model_name)

    @property
    def encoder(self):
        """The encoder, loaded on first use."""
        if self._encoder is None:
            self._encoder = self._encoder_recipe(self._device, verify=self._verify)()
        return self._encoder

    def _encoder_recipe(self, device: str, verify: bool = False):
        """How to make this collection's encoder, as a picklable call: cluster nodes make theirs from the
        same checkpoint path (or cache) rather than receiving the weights over the network."""
        from xsearch.encoder import Encoder
        from xsearch.model.config import architecture_of
        from xsearch.model.pretrained import PRETRAINED

        model_id = self._known_model()
        checkpoint = self._checkpoint or os.environ.get("XSEARCH_CHECKPOINT")
        if not checkpoint and model_id is not None and model_id not in PRETRAINED:
            # Only published weights can be downloaded; anything else must be the file it was made with.
            where = f"{self.path} holds embeddings of '{model_id}'" if self.exists() else f"model '{model_id}'"
            raise UsageError(
                f"{where}, which has no downloadable weights: give the checkpoint file it was made with "
                "(or set XSEARCH_CHECKPOINT)",
                argument="checkpoint",
            )
        # With no model known, a checkpoint file may name its own architecture (random-checkpoint's do).
        architecture = architecture_of(model_id) if model_id else None
        return functools.partial(
            Encoder.from_pretrained, checkpoint, architecture, device, self._precision, verify=verify
        )

    @property
    def engine(self):
        if self._engine is None:
            from xsearch.query.engine import Engine

            self._engine = Engine(self.store, lambda: self.encoder, self._index_cfg)
        return self._engine

    # ---- jobs -------------------------------------------------------------------------------------------

    def index(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        assign: Mapping[str | os.PathLike, Modality | str] | None = None,
        modalities: str | Sequence[Modality | str] | None = None,
        exclude: Sequence[str] = (),
        follow_symlinks: bool = False,
        prune: bool = False,
        update_index: bool = True,
        batch_size: int = 16,
        workers: int | None = None,
        commit_every: int = 256,
        file_timeout: float = 600.0,
        worker_memory_gb: float | None = None,
        ray: str | None = None,
        ray_actors: int | None = None,
        progress: bool = False,
    ):
        """Index files and folders: scan, decode in parallel, embed in batches, store, update the indices.

        ``assign`` maps folders or files to a modality (``{"scans/": "depth"}``); assigned paths that are not
        under ``paths`` are indexed too. ``modalities`` keeps only those. With decode workers, a file that
        takes longer than ``file_timeout`` seconds or needs more than ``worker_memory_gb`` (default: a share of
        the machine's memory) becomes an error row, as does one whose decoder crashes. ``ray`` (an address,
        ``auto`` or ``local``) decodes and embeds on a Ray cluster (``xsearch.indexer.cluster``) with ``ray_actors``
        encoders (default: one per node or GPU); planning and commits stay here. Returns the run report
        (``xsearch.indexer.pipeline.RunReport``): counts, failures with reasons, index sizes.
        """
        from xsearch.indexer.decode_pool import GIB, DecodeLimits
        from xsearch.indexer.pipeline import Indexer, IndexerCfg
        from xsearch.indexer.scan import ScanOptions

        started = time.perf_counter()
        assigned = _assignments(assign or {})
        # Real paths: a root reached through a link (/mnt/photos -> /data/photos) is the same files as its
        # target, and must give them the same uris, or indexing both would store every file twice.
        roots = [_real(p) for p in paths]
        roots += [p for p in assigned if not any(is_under(p, root) for root in roots)]  # outside PATHS
        if not roots:
            raise UsageError("nothing to index: give folders or files", argument="paths")
        missing = [p for p in roots if not os.path.lexists(p)]
        if missing:  # a typo or an unmounted drive: nothing is done, nothing is recorded
            raise UsageError(f"no such file or folder: {', '.join(missing)}", argument="paths")
        options = ScanOptions(
            modalities=frozenset(_parse(modalities, "modalities")) if modalities else None,
            exclude=tuple(exclude),
            follow_symlinks=follow_symlinks,
            assigned=assigned,
        )
        self._check_model_matches()
        cfg = IndexerCfg(
            batch_size=batch_size,
            workers=workers,
            limits=DecodeLimits(file_timeout, int(worker_memory_gb * GIB) if worker_memory_gb else None),
            commit_every=commit_every,
            prune=prune,
            update_index=update_index,
            progress=progress,
        )
        loading = time.perf_counter()
        if self._encoder is None:
            from xsearch.encoder import resolve_device, resolve_precision

            # A bad device or precision is a usage error, before "loading model".
            resolve_precision(self._precision, resolve_device(self._device))
            if progress:
                from tqdm import tqdm

                checkpoint = self._checkpoint or os.environ.get("XSEARCH_CHECKPOINT")
                named = self._known_model() or checkpoint or DEFAULT_MODEL
                tqdm.write(f"loading model {named} ...", file=sys.stderr)  # beside the progress bars
        encoder = self.encoder
        loaded = time.perf_counter()
        from xsearch.store import writer_lock

        with writer_lock(self.path):  # one writer per database: ids and commits never interleave
            store = self._open_for_writing(encoder)
            if ray is None:
                report = Indexer(store, encoder, cfg).run(roots, options)
            else:
                report = self._index_on_ray(ray, ray_actors, store, encoder, cfg, roots, options)
        report.load_seconds = loaded - loading
        report.seconds = time.perf_counter() - started  # the whole run, model loading included
        return report

    def _index_on_ray(self, address, actors, store, encoder, cfg, roots, options):
        import ray

        from xsearch.indexer.cluster import RayIndexer, connect

        started_here = connect(address)
        try:
            recipe = None if self._injected_encoder else self._encoder_recipe("auto")  # a given encoder ships as is
            return RayIndexer(store, encoder, cfg, encoder_source=recipe, actors=actors).run(roots, options)
        finally:
            if started_here:
                ray.shutdown()

    def search(
        self,
        query,
        *,
        target=None,
        k: int = 10,
        where: str | None = None,
        path: str | None = None,
        min_score: float | None = None,
        min_calibrated: float | None = None,
        autocut: int | None = None,
        dedup: bool = True,
    ):
        """The ``k`` items nearest to ``query`` (a ``Query``) among ``target`` modalities (default: all).

        Several targets are merged by calibrated score; cut-offs and duplicates as in ``Engine.search``.
        """
        return self.engine.search(
            query,
            target=target,
            k=k,
            where=where,
            path=path,
            min_score=min_score,
            min_calibrated=min_calibrated,
            autocut=autocut,
            dedup=dedup,
        )

    def classify(
        self,
        labels: Sequence[str] | None = None,
        *,
        examples: str | os.PathLike | Mapping[str, Sequence] | None = None,
        text_weight: float = 0.0,
        target=None,
        where: str | None = None,
        min_confidence: float | None = None,
        sort: str = "id",
    ):
        """Each item's most likely label and its probability: ``Labels`` (rows of ``id, uri, modality, label,
        score``; ``to_arrow``, ``to_pandas``, ``as_json``), sorted by ``"id"`` or by ``"score"``.

        Zero-shot from ``labels`` (texts), or few-shot from ``examples``: a folder whose subfolders are the
        labels and hold a few example files each (any modality), or ``{label: [files]}``. A label's prototype
        is the mean of its examples' unit vectors, blended with its text's embedding by ``text_weight``.
        """
        from xsearch.query import classify as labelling

        if (labels is None) == (examples is None):
            raise UsageError("give either labels (zero-shot) or examples (few-shot)", argument="labels")
        targets = self.engine.targets(target)
        encoder = self.engine.encoder
        if labels is not None:
            names = labelling.clean_labels(labels)
            prototypes = encoder.encode_text(names).numpy()
        else:
            names, prototypes = labelling.example_prototypes(encoder, examples, text_weight)
        labelled = labelling.classify(self.store, prototypes, names, targets, where)
        return labelled.filtered(min_confidence).sorted(sort)

    def info(self, check: bool = True) -> dict:
        """Counts per modality, model id, index kind and freshness, errors, size on disk.

        ``check`` reads every stored row first (a damaged data file raises ``DatabaseDamaged``), so the
        counts it reports are of data that can be read.
        """
        from xsearch.index import IndexSet

        store = self.store
        checked = store.check() if check else None
        indices = IndexSet(store)
        counts = {m.value: store.count(m) for m in store.modalities()}
        index_facts = {}
        for name in counts:
            status = indices.status(Modality(name))
            index_facts[name] = {"kind": status.get("kind"), "count": status.get("count"), "fresh": status["fresh"]}
            if "damaged" in status:
                index_facts[name]["damaged"] = status["damaged"]
        size = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        precisions: dict[str, int] = {}
        if store.has_column("precision"):  # databases written before it was recorded: "unknown"
            import pyarrow.compute as pc

            column = store.scan(["precision"])["precision"].fill_null("unknown").combine_chunks()
            precisions = {r["values"]: r["counts"] for r in pc.value_counts(column).to_pylist()}
        elif counts:
            precisions["unknown"] = sum(counts.values())
        return {
            "db": str(store.path),
            "model_id": store.model_id,
            "precision": precisions,
            "items": sum(counts.values()),
            "by_modality": counts,
            "errors": store.errors().count_rows(),
            "indices": index_facts,
            "bytes": size,
            "rows_read": checked,
        }

    def errors(self):
        """The files that could not be indexed: an Arrow table ``uri, modality, stage, message, at``."""
        return self.store.error_rows().sort_by("uri")

    # ---- helpers ----------------------------------------------------------------------------------------

    def _check_model_matches(self) -> None:
        """An explicit model that differs from the database's is refused before anything loads."""
        if self._model is not None and self.exists() and self.store.model_id != self._model:
            raise UsageError(
                f"{self.path} holds embeddings of model '{self.store.model_id}', not '{self._model}'; "
                "embeddings of different models cannot be mixed (index into another database)",
                argument="model",
            )

    def _open_for_writing(self, encoder):
        from xsearch.store import Store

        self._store = Store.open(self.path, model_id=encoder.model_id, embed_dim=encoder.embed_dim)
        self._engine = None
        return self._store


def _parse(value, argument: str) -> list[Modality]:
    try:
        return parse_modalities(value)
    except UsageError as exc:
        raise exc.for_argument(argument) from None


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


def _assignments(assign: Mapping) -> dict[str, Modality]:
    out = {}
    for path, modality in assign.items():
        try:
            out[_real(path)] = Modality(modality)
        except UsageError as exc:
            raise exc.for_argument("assign") from None
    return out
