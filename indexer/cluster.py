"""``xsearch index --ray``: decode and embed on a Ray cluster; plan and commit on the driver, as locally.

Only the middle of a run moves to the cluster. The driver scans, plans (incremental rules, ``--prune``,
``--as``, excludes), commits and updates the FAISS indices with the local indexer's own code
(``Indexer.run``); ``RayIndexer`` replaces just its decode stage with a Ray Data pipeline:

    tasks (driver) -> decode (CPU tasks: hash, content check, preprocess) -> embed (an actor pool: each
    actor loads the encoder once, on a GPU when the cluster has them) -> outcomes streamed to the driver

So the guarantees are the local ones: one uri-keyed upsert per batch of files (a killed driver loses at most
the last batch, and a re-run ends with one row per file), bad files become error rows with the same
reasons, and the run report is the same, plus the nodes that encoded files.

Every node must see the files, and the checkpoint, at the same paths (a shared filesystem or the same
``XSEARCH_HOME`` cache); only the driver opens the database.
"""

from __future__ import annotations

import functools
import logging
import pickle
import queue
import threading
from collections.abc import Callable, Iterator

from xsearch.decode.deferred import decode_jpegs
from xsearch.decode.work import Decoded, Prepared, Task, prepare
from xsearch.encoder import Encoder
from xsearch.errors import UsageError
from xsearch.indexer.pipeline import CPU_BATCH, Indexer, RunStalled
from xsearch.objects import storage_environment
from xsearch.options import IndexOptions
from xsearch.preprocess import PreprocessCfg
from xsearch.store import Database

log = logging.getLogger(__name__)

_DECODE_CPUS = 0.5  # a decode task and an encoder actor share a 1-CPU node
_ACTOR_CPUS = 0.5


def connect(address: str) -> bool:
    """Join the cluster at ``address`` (``auto``: the one ``ray start`` runs here; ``local``: start one in
    this process). Returns whether this call started Ray (and should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(address=None if address == "local" else address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(
            f"no Ray cluster at {address!r} ({str(exc).splitlines()[0]}); start one with `ray start --head`, "
            "or use --ray local",
            argument="ray",
        ) from None
    return True


def _decode(batch: dict, cfg: PreprocessCfg) -> dict:
    return {"decoded": [pickle.dumps(prepare(pickle.loads(task), cfg).decoded) for task in batch["task"]]}


class _Embedder:
    """An actor: loads the encoder once, embeds the decoded files of each batch per modality."""

    def __init__(self, encoder_source: Encoder | Callable[[], Encoder], batch_size: int):
        import ray

        self.encoder = encoder_source if isinstance(encoder_source, Encoder) else encoder_source()
        self.node = ray.get_runtime_context().get_node_id()
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        files: list[Decoded] = [pickle.loads(b) for b in batch["decoded"]]
        decode_jpegs(files, self.encoder.preprocess, self.encoder.device)
        outcomes = self.encoder.encode_decoded(files, self.batch_size)
        encoded = [self.node if o.vector is not None else "" for o in outcomes]  # beside each: who encoded it
        return {"outcome": [pickle.dumps(o) for o in outcomes], "node": encoded}


class RayIndexer(Indexer):
    """``Indexer`` whose decode and encode stages run on a Ray cluster (``connect`` first)."""

    def __init__(
        self,
        store: Database,
        encoder: Encoder,
        options: IndexOptions = IndexOptions(),
        *,
        encoder_source: Encoder | Callable[[], Encoder] | None = None,
    ):
        super().__init__(store, encoder, options)
        if self.moments is not None:
            raise UsageError(
                f"{store.path} keeps moments, which are cut and embedded on one machine: run without --ray",
                argument="ray",
            )
        self.encoder_source = encoder_source or encoder  # a recipe (a checkpoint path) ships better than weights

    def _decoded(self, tasks: list[Task]) -> Iterator[Prepared]:
        import ray

        gpus = int(ray.cluster_resources().get("GPU", 0))
        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
        actors = self.cfg.ray_actors or max(gpus, len(nodes), 1)
        log.info("ray: %d files, %d encoder actors (%d GPUs) on %d nodes", len(tasks), actors, gpus, len(nodes))
        dataset = ray.data.from_items([{"task": pickle.dumps(t)} for t in tasks])
        # Nodes share nothing but the bucket: they reach s3:// media with the driver's storage settings.
        storage = storage_environment()
        settings = {"runtime_env": {"env_vars": storage}} if storage else {}
        dataset = dataset.map_batches(
            functools.partial(_decode, cfg=self.encoder.preprocess), batch_size=4, num_cpus=_DECODE_CPUS, **settings
        )
        dataset = dataset.map_batches(
            _Embedder,
            fn_constructor_args=(self.encoder_source, self.cfg.batch_size or CPU_BATCH),
            batch_size=self.cfg.batch_size or CPU_BATCH,
            # One actor per node. A pool that may shrink (min 1) went on when a node died, but Ray Data then
            # kept small jobs on one actor, leaving the other nodes idle; a fixed pool can wait for ever for
            # the actor of a dead node (measured: stalled at 128 of 400 files), which ``_watched`` ends.
            concurrency=actors,
            num_cpus=_ACTOR_CPUS,
            num_gpus=1 if gpus else 0,
            scheduling_strategy="SPREAD",  # one actor per node before a second on any
            **settings,
        )
        for row in _watched(dataset.iter_rows(), self.cfg.ray_stall_seconds):
            if row["node"]:
                self.nodes.add(row["node"])
            yield Prepared(pickle.loads(row["outcome"]))  # encoded: an Outcome stands for the Decoded


def _watched(rows: Iterator[dict], seconds: float) -> Iterator[dict]:
    """``rows``, or ``RunStalled`` when none comes for ``seconds`` (Ray Data waits for ever on work that a
    lost node held)."""
    arrived: queue.Queue = queue.Queue(maxsize=64)
    end = object()

    def pull() -> None:
        try:
            for row in rows:
                arrived.put(row)
        except BaseException as exc:  # handed to the consumer, raised there
            arrived.put(exc)
        arrived.put(end)

    threading.Thread(target=pull, name="xsearch-ray-rows", daemon=True).start()
    while True:
        try:
            item = arrived.get(timeout=seconds)
        except queue.Empty:
            raise RunStalled(
                f"the cluster sent no file back for {seconds:g} s (a node lost?); what was embedded is "
                "committed: run again to go on (--ray-stall sets the wait)",
                argument="ray_stall_seconds",
            ) from None
        if item is end:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
