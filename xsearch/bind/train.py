"""``xsearch bind``: learn an adapter that maps a new modality into a database's space from pairs with a
modality it already has (the anchor), the big towers frozen.

The anchors are embedded once with the database's model (an anchor file already indexed gives its stored
vector); so are the new files' features when a frozen tower reads them. Only the adapter trains, with a
symmetric InfoNCE loss and a learned temperature; pairs sharing an anchor (class labels as text) are one
another's positives, not negatives. A held-out split picks the epoch: training stops when held-out
recall@1 has not improved for ``patience`` epochs, and the best epoch's weights are kept.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from xsearch.bind.adapter import RawEncoder, build
from xsearch.bind.binding import (
    BUILT_IN,
    FEATURES,
    RAW,
    TOWER_FEATURES,
    Binding,
    bindings,
    register_binding,
    save_binding,
)
from xsearch.bind.pairs import Pair, read_pairs
from xsearch.errors import DecodeError, UsageError
from xsearch.modalities import Modality
from xsearch.options import BindOptions, real_path
from xsearch.paths import modality_of_path
from xsearch.store import writer_lock

MIN_TRAIN = 8
# The loss's alignment term (1 - cosine of an output to its anchor), beside InfoNCE: ranking alone leaves the
# outputs near, not on, their anchors, and a search ranks them among every stored vector, not a batch's.
ALIGN = 100.0
TEXT_BATCH = 64


@dataclass
class BindReport:
    name: str
    anchor: str
    features: str
    pairs: int
    trained: int
    held_out: int
    recall_at_1: float | None
    recall_at_10: float | None
    chance_at_1: float | None
    chance_at_10: float | None
    zero_shot: float | None = None  # held-out accuracy against the labels' texts
    zero_shot_chance: float | None = None
    labels: int = 0
    epochs: int = 0
    best_epoch: int = 0
    temperature: float = 0.0
    train_seconds: float = 0.0  # the adapter's training alone (the rest: reading files, embedding anchors)
    seconds: float = 0.0
    reindexed: int = 0

    def as_json(self) -> dict:
        return asdict(self)


def bind(collection, options: BindOptions) -> BindReport:
    """Train, store and register ``options.name`` in ``collection``'s database; returns the report. Bad
    input is one ``UsageError``, raised before anything is written."""
    started = time.perf_counter()
    anchor, previous = _checked(collection, options)
    pairs = read_pairs(options.pairs, anchor_is_text=anchor is Modality.TEXT)
    features = options.features or _default_features(pairs)
    torch.manual_seed(options.seed)
    encoder = collection.encoder
    anchors, keys = _anchor_vectors(collection, encoder, pairs, anchor)
    inputs, raw_input = _source_inputs(encoder, pairs, features)
    train, held = _split(len(pairs), options.holdout, options.seed)
    shape = _adapter_shape(features, raw_input, encoder.embed_dim, options.hidden)
    module = build(shape)
    if isinstance(module, RawEncoder):
        module.fit_statistics(inputs[train])
    fitted = _fit(module, inputs, anchors, keys, train, held, options, encoder.device)
    report = BindReport(
        options.name, anchor.value, features, len(pairs), len(train), len(held), *fitted.recalls, **fitted.facts
    )
    report.zero_shot, report.zero_shot_chance, report.labels = _zero_shot(encoder, module, inputs, pairs, held)
    weights = _serialised(module)
    binding = Binding(
        options.name,
        anchor.value,
        features,
        collection.store.model_id,
        encoder.embed_dim,
        shape,
        hashlib.sha256(weights).hexdigest(),
        raw_input=raw_input,
        report=report.as_json(),
    )
    with writer_lock(collection.store.files):  # no xsearch index adds rows of the old adapter meanwhile
        rows = _rows_of(collection, options.name) if previous is not None else []
        register_binding(save_binding(collection.store.files, binding, weights))
        collection.store.delete_items(uris=rows)  # the old adapter's vectors never sit beside the new one's
    if rows:
        report.reindexed = _reindexed(collection, options.name, rows)
    report.seconds = time.perf_counter() - started
    return report


# ---- checks ---------------------------------------------------------------------------------------------


def _checked(collection, options: BindOptions) -> tuple[Modality, Binding | None]:
    """The anchor modality and the binding ``options.name`` has now, after every check of the names."""
    name = options.name.strip().lower()
    if not name.isidentifier():
        raise UsageError(f"modality name {options.name!r} must be a single word", argument="name")
    options.name = name
    if name in BUILT_IN:
        raise UsageError(f"{name!r} is a built-in modality: bind a new name", argument="name")
    if options.anchor.strip().lower() == name:
        raise UsageError(
            f"the anchor cannot be the new modality {name!r} itself: name one the model has", argument="anchor"
        )
    try:
        anchor = Modality(options.anchor)
    except UsageError as exc:
        raise exc.for_argument("anchor") from None
    if anchor.value not in BUILT_IN or anchor is Modality.VIDEO:
        raise UsageError(
            f"--anchor {anchor}: expected one of image, text, audio, depth, thermal, imu", argument="anchor"
        )
    if options.features is not None and options.features not in FEATURES:
        raise UsageError(f"--features {options.features!r}: expected one of {', '.join(FEATURES)}", argument="features")
    if not 0 <= options.holdout < 0.9:
        raise UsageError(f"--holdout {options.holdout}: expected a fraction below 0.9", argument="holdout")
    if not collection.exists():
        raise UsageError(f"no database at {collection.path}: xsearch index creates one", argument="db")
    collection.bound_modalities()
    previous = {b.name: b for b in bindings(collection.store.files)}.get(name)
    if previous is not None and not options.replace:
        count = len(_rows_of(collection, name))
        raise UsageError(
            f"modality {name!r} is bound already ({count} items): --replace binds it again and re-indexes them",
            argument="name",
        )
    return anchor, previous


def _default_features(pairs: list[Pair]) -> str:
    if all(p.source.lower().endswith(".npy") for p in pairs):
        return RAW
    kind = modality_of_path(pairs[0].source)
    if kind is None or kind.value not in TOWER_FEATURES:
        raise UsageError(
            f"{pairs[0].source}: cannot tell which tower reads it: give --features ({', '.join(FEATURES)})",
            argument="features",
        )
    return kind.value


# ---- what trains ------------------------------------------------------------------------------------------


def _anchor_vectors(collection, encoder, pairs: list[Pair], anchor: Modality) -> tuple[torch.Tensor, torch.Tensor]:
    """``(unit vectors [n_anchors, dim], key of each pair's anchor [n_pairs])``: texts embedded once each,
    files read from the database when indexed as ``anchor``, else embedded."""
    names = list(dict.fromkeys(p.anchor for p in pairs))
    key = {name: i for i, name in enumerate(names)}
    if anchor is Modality.TEXT:
        vectors = torch.cat([encoder.encode_text(names[i : i + TEXT_BATCH]) for i in range(0, len(names), TEXT_BATCH)])
    else:
        vectors = torch.from_numpy(_file_vectors(collection, names, anchor, pairs))
    return F.normalize(vectors.float(), dim=-1), torch.tensor([key[p.anchor] for p in pairs])


def _file_vectors(collection, paths: list[str], anchor: Modality, pairs: list[Pair]) -> np.ndarray:
    items = collection.store.items()
    found: dict[str, np.ndarray] = {}
    for path in paths:
        row = items.lookup(real_path(path), ["embedding", "modality"])
        if row is not None and row["modality"] == anchor.value:
            found[path] = np.asarray(row["embedding"], np.float32)
    missing = [p for p in paths if p not in found]
    for path, outcome in zip(missing, collection.embed(missing, anchor) if missing else []):
        if not outcome.ok:
            line = next(p.line for p in pairs if p.anchor == path)
            raise UsageError(f"line {line}: {outcome.message}", argument="pairs")
        found[path] = outcome.embedding
    return np.stack([found[p] for p in paths])


def _source_inputs(encoder, pairs: list[Pair], features: str) -> tuple[torch.Tensor, dict | None]:
    """What the adapter reads for each pair: the arrays (RAW, with how they are shaped) or the frozen
    tower's unit embeddings."""
    from xsearch.bind.raw import RawCfg, read_array, shaped
    from xsearch.decode import decode

    if features == RAW:
        try:
            arrays = [read_array(p.source) for p in pairs]
            cfg = RawCfg.fitted(arrays, [p.source for p in pairs])
            return torch.stack([shaped(a, cfg, p.source) for a, p in zip(arrays, pairs)]), _raw_record(cfg)
        except DecodeError as exc:
            raise UsageError(str(exc), argument="pairs") from None
    reading = Modality(features)
    files = [decode(p.source, reading, encoder.preprocess) for p in pairs]
    _refuse_failed(pairs, files)  # unreadable files, before the model runs
    outcomes = encoder.encode_decoded(files)
    _refuse_failed(pairs, outcomes)  # the model's own failures (NaN, out of memory)
    return torch.from_numpy(np.stack([o.embedding for o in outcomes])), None


def _refuse_failed(pairs: list[Pair], outcomes) -> None:
    for pair, outcome in zip(pairs, outcomes):
        if not outcome.ok:
            raise UsageError(f"line {pair.line}: {outcome.message}", argument="pairs")


def _raw_record(cfg) -> dict:
    return {"kind": cfg.kind, "channels": cfg.channels, "length": cfg.length}


def _split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    held = 0 if holdout == 0 else min(max(2, round(n * holdout)), n - MIN_TRAIN)
    return np.sort(order[held:]), np.sort(order[:held])


def _adapter_shape(features: str, raw_input: dict | None, dim: int, hidden: int | None) -> dict:
    if features == RAW:
        return {
            "kind": "raw",
            "channels": raw_input["channels"],
            "length": raw_input["length"],
            "dim": dim,
            "hidden": hidden or 1024,
        }
    return {"kind": "projector", "dim": dim, "hidden": hidden or 2048}


@dataclass
class _Fitted:
    recalls: tuple
    facts: dict


def _fit(module, inputs, anchors, keys, train, held, options: BindOptions, device) -> _Fitted:
    """Train ``module`` in place (left at its best epoch, in eval mode, on the CPU)."""
    from tqdm import tqdm

    started = time.perf_counter()
    module.to(device)
    scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device))
    optimiser = torch.optim.AdamW([*module.parameters(), scale], lr=options.learning_rate, weight_decay=0.05)
    inputs, anchors, keys = inputs.to(device), anchors.to(device), keys.to(device)
    generator = torch.Generator().manual_seed(options.seed)
    best, best_state, best_epoch, since, epoch = (-1.0, -1.0, -1.0), None, 0, 0, 0
    batch_size = options.batch_size or min(256, max(32, len(train) // 12))
    bar = tqdm(range(options.epochs), desc=f"bind {options.name}", unit="epoch", disable=not options.progress)
    for epoch in bar:
        module.train()
        order = torch.from_numpy(train)[torch.randperm(len(train), generator=generator)]
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size].to(device)
            if len(batch) < 2:
                continue
            loss = _loss(module(inputs[batch]), anchors[keys[batch]], keys[batch], scale.exp().clamp(max=100))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if not len(held):
            continue
        recalls = _recalls(module, inputs, anchors, keys, held)
        bar.set_postfix(recall_at_1=f"{recalls[0]:.2f}")
        if (recalls[0], recalls[1], recalls[4]) > best:
            best, best_epoch, since = (recalls[0], recalls[1], recalls[4]), epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            since += 1
            if since >= options.patience:
                break
    bar.close()
    if best_state is not None:
        module.load_state_dict(best_state)
    module.cpu().eval()
    recalls = _recalls(module, inputs.cpu(), anchors.cpu(), keys.cpu(), held)[:4] if len(held) else (None,) * 4
    facts = {"epochs": epoch + 1, "best_epoch": best_epoch or epoch + 1, "temperature": float(1 / scale.exp().item())}
    facts["train_seconds"] = time.perf_counter() - started
    return _Fitted(recalls, facts)


def _loss(sources: torch.Tensor, anchors: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; pairs that share an anchor are each other's positives."""
    sources = F.normalize(sources, dim=-1)
    logits = scale * sources @ anchors.T
    same = (keys[:, None] == keys[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)
    contrastive = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    return contrastive + ALIGN * (1 - (sources * anchors).sum(dim=-1)).mean()


@torch.no_grad()
def _recalls(module, inputs, anchors, keys, held) -> tuple[float, float, float, float, float]:
    """Held-out recall@1 and @10 of each held-out file's anchor among every anchor of the pairs, their
    chance levels, and the held-out files' mean cosine to their anchors (which breaks ties between epochs)."""
    module.eval()
    held = torch.from_numpy(held).to(inputs.device)
    found = F.normalize(module(inputs[held]), dim=-1)
    scores = found @ anchors.T
    own = scores[torch.arange(len(held)), keys[held]]
    rank_of_own = (scores > own[:, None]).sum(dim=1)
    n = len(anchors)
    return (
        float((rank_of_own < 1).float().mean()),
        float((rank_of_own < 10).float().mean()),
        1 / n,
        min(10, n) / n,
        float(own.mean()),
    )


@torch.no_grad()
def _zero_shot(encoder, module, inputs, pairs: list[Pair], held) -> tuple[float | None, float | None, int]:
    """Held-out accuracy of labelling each file with the nearest of the labels' texts (the paper's
    emergent zero-shot classification); ``None`` without labels or held-out pairs."""
    labels = sorted({p.label for p in pairs if p.label is not None})
    if not labels or not len(held):
        return None, None, len(labels)
    texts = F.normalize(encoder.encode_text(labels).float(), dim=-1)
    found = (F.normalize(module(inputs[torch.from_numpy(held)]), dim=-1) @ texts.T).argmax(dim=1)
    truth = torch.tensor([labels.index(pairs[i].label) for i in held])
    return float((found == truth).float().mean()), 1 / len(labels), len(labels)


def _serialised(module) -> bytes:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()


# ---- after a re-bind -----------------------------------------------------------------------------------


def _rows_of(collection, name: str) -> list[str]:
    """The uris of the rows of modality ``name`` (none when it was never registered here)."""
    from xsearch.store import ItemFilter

    if name not in Modality:
        return []
    return collection.store.items().scan(["uri"], ItemFilter(modality=Modality(name)))["uri"].to_pylist()


def _reindexed(collection, name: str, uris: list[str]) -> int:
    """The files of ``name``'s former rows embedded again, with the new adapter; returns how many (files gone
    since are dropped, as ``index --prune`` would)."""
    present = [u for u in uris if os.path.exists(u)]
    if present:
        collection.index(present, assign=dict.fromkeys(present, name), progress=False)
    return len(present)
