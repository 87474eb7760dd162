"""Checkpoint loading: local path, ``$XSEARCH_CHECKPOINT``, or a verified download into the cache.

One straight line: resolve the file -> ``torch.load(weights_only=True)`` -> check keys and shapes with a
readable error -> ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from xsearch.errors import CheckpointError, UsageError
from xsearch.modalities import Tower
from xsearch.model.config import RANDOM_MARK, get_config
from xsearch.model.imagebind import ImageBind, create_model
from xsearch.model.pretrained import PRETRAINED, PretrainedWeights, checkpoint_dir, given_checkpoint
from xsearch.objects import ObjectUri, is_object_uri, store_of

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_NOTES = "xsearch"  # the key of xsearch's notes beside "model" in a checkpoint it wrote


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str,
    dest: Path,
    sha256: str | None = None,
    *,
    progress: bool = True,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` with a progress bar, installing it only once complete and checked.

    - one download per destination at a time (a lock beside it); a second caller waits and takes the file;
    - the bytes go to a new temporary file (``O_EXCL``, never through an existing name or link);
    - a transfer shorter than its ``Content-Length``, a sha256 other than ``sha256``, or a file ``check``
      cannot load is discarded, so no damaged file is installed and no wrong hash recorded. The sha256 of
      the result is recorded in ``dest.sha256``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(dest.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when this process dies
        if dest.is_file() and dest.with_name(dest.name + ".sha256").is_file():
            return dest  # another process finished it while this one waited
        handle, name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
        part = Path(name)
        try:
            with os.fdopen(handle, "wb") as out:
                actual = _fetch(url, out, dest.name, progress)
            if sha256 is not None and actual != sha256.lower():
                raise CheckpointError(
                    f"{url}: sha256 mismatch (expected {sha256}, got {actual}); the file was discarded"
                )
            if check is not None:
                check(part)
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)
        _write_beside(dest.with_name(dest.name + ".sha256"), actual + "\n")
    return dest


def _write_beside(path: Path, text: str) -> None:
    """Write a small record beside a checkpoint as the checkpoint itself is written: a new temporary file
    renamed over ``path``, so that a link planted at ``path`` is replaced, never written through."""
    handle, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)


def _fetch(url: str, out, label: str, progress: bool) -> str:
    """Stream ``url`` into ``out``; the sha256 of what arrived. Short transfers are errors."""
    from tqdm.auto import tqdm

    digest, received = hashlib.sha256(), 0
    if is_object_uri(url):
        return _fetch_object(url, out, label, progress)
    try:
        with urllib.request.urlopen(url) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not progress) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as exc:  # URLError, HTTPError, IncompleteRead...
        raise CheckpointError(
            f"{url}: download failed ({exc}); give a local checkpoint file, or set XSEARCH_CHECKPOINT to one",
            argument="checkpoint",
        ) from None
    if total is not None and received != total:
        raise CheckpointError(f"{url}: download cut short ({received:,} of {total:,} bytes); run again to retry")
    return digest.hexdigest()


def _fetch_object(uri: str, out, label: str, progress: bool) -> str:
    """Stream an object into ``out``; the sha256 of what arrived."""
    import obstore
    from tqdm.auto import tqdm

    where = ObjectUri.parse(uri)
    digest = hashlib.sha256()
    try:
        result = obstore.get(store_of(where), where.key)
        with tqdm(total=result.meta["size"], unit="B", unit_scale=True, desc=label, disable=not progress) as bar:
            for chunk in result.stream(min_chunk_size=_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    except Exception as exc:  # obstore's network and permission errors
        raise CheckpointError(f"{uri}: download failed ({str(exc).splitlines()[0]})", argument="checkpoint") from None
    return digest.hexdigest()


def _loads(path: Path) -> None:
    """A downloaded checkpoint must open as one before its hash is recorded as the reference."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"the download is not a loadable checkpoint ({exc}); the file was discarded") from None
    if not isinstance(state, dict) or not state:
        raise CheckpointError("the download is not a checkpoint (no tensors in it); the file was discarded")


def _file_identity(path: Path) -> dict:
    info = path.stat()
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "inode": info.st_ino}


def _verify_recorded_sha256(path: Path, verify: bool = False) -> None:
    """Check a cached download against the sha256 recorded when it arrived.

    Hashing 4.5 GB takes seconds, so it is done once: the size, mtime and inode at which the file last
    matched are kept beside the hash (``.verified``), and a later load re-hashes only when one of them
    changed, or when ``verify`` asks for it (a flipped byte that left them alone).
    """
    record = path.with_name(path.name + ".sha256")
    if not record.exists():
        return
    expected = record.read_text().strip()
    verified = path.with_name(path.name + ".verified")
    identity = _file_identity(path)
    if not verify and verified.exists():
        try:
            if json.loads(verified.read_text()) == {**identity, "sha256": expected}:
                return
        except (OSError, ValueError):
            pass  # an unreadable record: hash again
    if sha256_file(path) != expected:
        raise CheckpointError(
            f"{path}: sha256 differs from the one recorded at download ({record}); "
            "the file is damaged: delete it to download again"
        )
    try:
        _write_beside(verified, json.dumps({**identity, "sha256": expected}))
    except OSError:
        log.debug("cannot record the verification of %s (read-only cache?)", path)


def resolve_checkpoint(
    checkpoint: str | os.PathLike | None = None,
    weights: str = "imagebind_huge",
    *,
    download_missing: bool = True,
    url: str | None = None,
    verify: bool = False,
) -> Path:
    """Find the checkpoint file: ``checkpoint`` if given, else ``$XSEARCH_CHECKPOINT``, else the cache
    (``$XSEARCH_HOME/checkpoints``), downloading it there on first use."""
    explicit = given_checkpoint(checkpoint)
    if explicit and is_object_uri(explicit):
        return _object_checkpoint(explicit, verify)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint file not found", argument="checkpoint")
        return path
    entry: PretrainedWeights = PRETRAINED[weights]
    path = checkpoint_dir() / entry.filename
    if path.is_file():
        _verify_recorded_sha256(path, verify)
        return path
    if not download_missing:
        raise CheckpointError(
            f"{path}: checkpoint not found; give a checkpoint file, set XSEARCH_CHECKPOINT, or allow the download",
            argument="checkpoint",
        )
    log.warning("Downloading %s to %s. %s", entry.url, path, entry.license)
    return download(url or entry.url, path, entry.sha256, check=_loads)


def _object_checkpoint(uri: str, verify: bool) -> Path:
    """A checkpoint in a bucket (``s3://...``), copied once into ``$XSEARCH_HOME/checkpoints/objects/`` (each
    cluster node makes its own copy) and checked as a download is; copied again when the object's ETag
    changes (replaced in the bucket)."""
    from xsearch.sources import media_info

    where = ObjectUri.parse(uri)
    info = media_info(uri)
    if info is None:
        raise CheckpointError(f"{uri}: checkpoint object not found", argument="checkpoint")
    dest = checkpoint_dir() / "objects" / where.scheme / where.bucket / where.key
    source = dest.with_name(dest.name + ".source")
    tag = json.dumps({"size": info.size, "etag": info.identity[1]})
    if dest.is_file() and source.is_file() and source.read_text() == tag:
        _verify_recorded_sha256(dest, verify)
        return dest
    for stale in (dest, dest.with_name(dest.name + ".sha256"), dest.with_name(dest.name + ".verified")):
        stale.unlink(missing_ok=True)
    download(uri, dest, check=_loads)
    _write_beside(source, tag)
    return dest


def _read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The state_dict and xsearch's own notes (``{"random_weights_seed": 0}`` for a trial checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "mmap can only be used" in reason:  # torch's advice to whoever saved it: this is simply no zip archive
            reason = "not a PyTorch zip archive"
        reason = reason.split(". ")[0]  # the cause, without torch's paragraph of advice ("internal miniz error...")
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {reason}") from None
    notes = {}
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        notes = state.get(_NOTES) if isinstance(state.get(_NOTES), dict) else {}
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state_dict of tensors")
    return state, notes


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Raise a readable ``CheckpointError`` unless ``state`` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if len(missing) == len(expected):
        raise CheckpointError(f"{path}: not an ImageBind checkpoint (none of the expected keys, e.g. {missing[0]!r})")
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} keys missing (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]!r})")
        raise CheckpointError(f"{path}: does not match ImageBind '{model.cfg.name}': " + ", ".join(parts))
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: wrong shape for {key!r}: {tuple(state[key].shape)} in the file, "
                f"{tuple(tensor.shape)} in ImageBind '{model.cfg.name}' (a checkpoint of another size?)"
            )


class TowerSource:
    """A checkpoint opened once, memory-mapped, whose towers load when a job first needs them.

    Opening checks every key and shape against the architecture (on the meta device: no weights are read),
    so a wrong file fails at once; ``model(towers)`` and ``add(model, towers)`` then copy in only the
    towers asked for. A text query loads the text tower (a quarter of ImageBind-huge), an audio search the
    audio tower, and the vectors are those of a full load.
    """

    def __init__(self, path: str | os.PathLike, architecture: str | None = None):
        self.path = Path(path)
        self.state, notes = _read_checkpoint(self.path)
        self.cfg = get_config(architecture or notes.get("architecture") or "imagebind_huge")
        check_state_dict(create_model(self.cfg, device="meta"), self.state, self.path)
        self.model_id = self.cfg.name
        if "random_weights_seed" in notes:
            self.model_id = f"{self.cfg.name}{RANDOM_MARK}{int(notes['random_weights_seed'])}"

    def model(self, towers: Iterable[Tower] = ()) -> ImageBind:
        """A model holding ``towers`` (more can be added later with ``add``)."""
        model = create_model(self.cfg, device="meta", towers=[])
        model.model_id = self.model_id
        self.add(model, towers)
        return model.eval()

    def add(self, model: ImageBind, towers: Iterable[Tower]) -> None:
        """Build and load the ``towers`` that ``model`` does not hold yet (on the CPU, in float32)."""
        missing = [t for t in map(Tower, towers) if t not in model.towers]
        if not missing:
            return
        with torch.device("meta"):
            model.add_towers(missing)
        keys = {t.value for t in missing}
        model.load_state_dict(
            {k: v for k, v in self.state.items() if k.split(".")[1] in keys}, strict=False, assign=True
        )
        # Buffers that are not in the state_dict would stay on "meta"; there are none, but make it loud.
        leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
        if leftover:
            raise CheckpointError(f"{self.path}: left uninitialised: {leftover[:3]}")


def load_checkpoint(
    path: str | os.PathLike, architecture: str | None = None, towers: Iterable[Tower] | None = None
) -> ImageBind:
    """Build ``architecture`` and load ``path`` into it (all towers, or ``towers``); every key and shape is
    checked. ``architecture=None``: the one the file names (``random-checkpoint`` files do), else
    ``imagebind_huge``."""
    return TowerSource(path, architecture).model(list(Tower) if towers is None else towers)


def open_checkpoint(
    checkpoint: str | os.PathLike | None = None,
    weights: str = "imagebind_huge",
    architecture: str | None = None,
    **resolve_kwargs,
) -> TowerSource:
    """Resolve the checkpoint (path, env, cache or download) and open it; towers load on demand."""
    if weights not in PRETRAINED:
        raise UsageError(f"unknown weights {weights!r} (known: {', '.join(PRETRAINED)})", argument="weights")
    if architecture is not None:
        get_config(architecture)  # an unknown name fails before any file is read or downloaded
    explicit = given_checkpoint(checkpoint)
    path = resolve_checkpoint(explicit, weights, **resolve_kwargs)
    # A file given by the user may name its own architecture; a download is the weights' own.
    return TowerSource(path, architecture or (None if explicit else PRETRAINED[weights].architecture))


def load_pretrained(
    checkpoint: str | os.PathLike | None = None,
    weights: str = "imagebind_huge",
    architecture: str | None = None,
    **resolve_kwargs,
) -> ImageBind:
    """The pretrained model: resolve the checkpoint (path, env, cache or download), then load it strictly.

    ``architecture`` defaults to the one a checkpoint file names (``random-checkpoint`` files do), else to
    the one of ``weights``; name another (``tiny_test``) for a checkpoint of that size.

    Example
    -------
    >>> from xsearch.model import load_pretrained
    >>> model = load_pretrained("~/models/imagebind_huge.pth")  # doctest: +SKIP
    """
    return open_checkpoint(checkpoint, weights, architecture, **resolve_kwargs).model(list(Tower))


def save_checkpoint(model: ImageBind, path: str | os.PathLike, notes: dict | None = None) -> Path:
    """Write ``model.state_dict()`` (official key names) to ``path`` atomically; with ``notes``, as
    ``{"model": state_dict, "xsearch": notes}`` (a layout the loader, and Meta's own, read)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(model.state_dict() if notes is None else {"model": model.state_dict(), _NOTES: notes}, tmp)
    shutil.move(tmp, path)
    return path


def save_random_checkpoint(path: str | os.PathLike, architecture: str = "tiny_test", seed: int = 0) -> Path:
    """A checkpoint of ``architecture`` with random weights, for trying xsearch without the real weights.

    Its embeddings are meaningless; a model loaded from it is called ``"<architecture>:random-<seed>"``, so
    a database made with it says so and never mixes with real embeddings.
    """
    cfg = get_config(architecture)
    torch.manual_seed(seed)
    notes = {"random_weights_seed": int(seed), "architecture": cfg.name}
    return save_checkpoint(create_model(cfg), path, notes=notes)
