"""One file -> model input, the same way everywhere: the indexer's workers, ``xsearch embed``
(``Collection.embed``), file query terms and few-shot examples all call ``decode``.

``decode`` never raises for a bad file: its ``Outcome`` carries the reason and the stage, so one broken
file costs one error row (or one failed line) and nothing else. The rules, in order:

1. the modality: the one given, else what the indexer's rules make of the path (``modality_of_path``:
   a folder named ``depth``, a stem ending ``_thermal``, the extension, the first bytes);
2. the content check (``xsearch.sniff``): a ``.jpg`` that holds text is refused; a container whose
   content is its modality's fallback (an ``.mp4`` with only sound) is decoded as the fallback;
3. decoding; a container without the stream asked for (``NoStreamError``) falls back the same way;
4. with ``digest``, the file's sha256, from the same bytes as the model input: a file replaced or
   rewritten while it was read (size, mtime or inode moved) is read again.

The same ``Outcome`` then carries the file's vector once encoded (``Encoder.encode_outcomes``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from xsearch.errors import DecodeError, NoStreamError
from xsearch.modalities import Modality
from xsearch.paths import content_mismatch, modality_from_family, modality_of_path
from xsearch.preprocess import PreprocessCfg, preprocess_with_metadata
from xsearch.sniff import HEAD_BYTES, sniff
from xsearch.sources import media_info, open_media

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20
OUT_OF_MEMORY = "out of memory while decoding"  # the decode pool words it with its limit
UNKNOWN_TYPE = "unknown file type (name its modality)"


@dataclass
class Outcome:
    """What became of one file: model input and then its vector, or ``unchanged``, or an error with its
    stage (``read``, ``decode``, ``encode``). ``task`` is the indexer's plan for the file, when it has one."""

    path: str
    modality: Modality | None  # the one asked for, unless the content is its fallback's
    sha256: str | None = None
    tensor: object | None = None  # the model input (a torch tensor) until it is encoded
    metadata: dict = field(default_factory=dict)
    unchanged: bool = False
    error: str | None = None
    stage: str | None = None
    vector: np.ndarray | None = None  # the unit vector, once encoded
    task: object | None = None
    jpeg: bytes | None = None  # a JPEG left for the encoder to decode in a batch on its device (``defer_jpeg``)

    @property
    def ok(self) -> bool:
        """Decoded (or encoded) without error, and not skipped as unchanged."""
        return self.error is None and not self.unchanged

    @property
    def embedding(self) -> np.ndarray | None:
        return self.vector

    @property
    def thumbnail(self) -> bytes | None:
        """The preview made from the decoded pixels, when one was asked for."""
        return self.metadata.get("thumbnail")

    @property
    def message(self) -> str | None:
        """The error as a person reads it: ``path: reason``."""
        return None if self.error is None else f"{self.path}: {self.error}"

    def fail(self, stage: str, reason: str) -> Outcome:
        self.stage, self.error, self.tensor = stage, reason, None
        return self

    def as_json(self) -> dict:
        """``{"path", "modality", "embedding"}`` or ``{"path", "modality", "error"}``."""
        out = {"path": self.path, "modality": self.modality.value if self.modality else None}
        if self.vector is None:
            return {**out, "error": self.message or "not embedded"}
        return {**out, "embedding": [round(float(v), 7) for v in self.vector]}


def decode(
    path: str | os.PathLike,
    modality: Modality | str | None = None,
    cfg: PreprocessCfg | None = None,
    *,
    thumbnail: bool = False,
    digest: bool = False,
    known_sha256: str | None = None,
    attempts: int = 3,
    defer_jpeg: bool = False,
) -> Outcome:
    """``path`` as model input for ``modality`` (``None``: the indexer's rules decide), never raising for a
    bad file. ``digest`` hashes the bytes decoded; with ``known_sha256``, a file whose bytes are unchanged
    comes back ``unchanged`` without being decoded. With ``defer_jpeg``, a JPEG image is checked (header,
    size caps) but not decoded: its bytes go to the encoder, which decodes JPEGs in batches on its device
    (``Encoder.encode_outcomes``, ``xsearch.preprocess.jpeg_batch``)."""
    path = os.fspath(path)
    modality = Modality(modality) if modality else modality_of_path(path)
    if modality is None:
        return Outcome(path, None).fail("decode", UNKNOWN_TYPE)
    cfg = cfg if cfg is not None else PreprocessCfg()
    digest = digest or known_sha256 is not None
    for _ in range(attempts):
        before = _identity(path)
        outcome = _decode_once(path, modality, cfg, thumbnail, digest, known_sha256, defer_jpeg)
        if not digest or before is None or outcome.stage == "read" or _identity(path) == before:
            return outcome
        log.info("%s changed while it was read; reading it again", path)
    return Outcome(path, modality).fail("read", "the file kept changing while it was read (retried next run)")


def _decode_once(
    path: str, modality: Modality, cfg, thumbnail: bool, digest: bool, known_sha256, defer_jpeg: bool = False
) -> Outcome:
    outcome = Outcome(path, modality)
    try:
        head, outcome.sha256 = _read_head(path, digest)
    except FileNotFoundError:  # while indexing (``digest``), the scan saw it a moment ago
        return outcome.fail("read", "file not found" + (" (deleted or moved after the scan?)" if digest else ""))
    except OSError as exc:
        return outcome.fail("read", DecodeError.from_os_error(path, exc).reason)
    if not head:
        return outcome.fail("read", "file is empty (0 bytes)")
    if known_sha256 is not None and known_sha256 == outcome.sha256:
        outcome.unchanged = True  # touched or copied, same bytes: keep the stored embedding
        return outcome
    found = sniff(head)
    fallback = modality.spec.fallback
    if fallback is not None and found is not None and modality_from_family(found.family) is fallback:
        outcome.modality = fallback  # e.g. an .mp4/.mkv that holds only sound is audio
    mismatch = content_mismatch(outcome.modality, head)
    if mismatch:
        return outcome.fail("decode", mismatch)
    if defer_jpeg and outcome.modality is Modality.IMAGE and found is not None and found.format == "a JPEG image":
        return _deferred_jpeg(outcome, cfg)

    def prepare():
        try:
            return preprocess_with_metadata(path, outcome.modality, cfg, thumbnail)
        except NoStreamError:
            fallback = outcome.modality.spec.fallback
            if fallback is None:
                raise
            outcome.modality = fallback  # a container without the stream asked for: try its fallback's
            return preprocess_with_metadata(path, outcome.modality, cfg, thumbnail)

    prepared = guarded_decode(outcome, prepare)
    if prepared is not None:
        outcome.tensor, outcome.metadata = prepared.tensor, prepared.metadata
    return outcome


def guarded_decode(outcome: Outcome, run):
    """``run()``, or ``None`` with ``outcome`` failed for the reason a person reads: a decode error as it
    says, an allocation refused as ``OUT_OF_MEMORY``, a decoder bug on a hostile file as one line."""
    try:
        return run()
    except DecodeError as exc:
        outcome.fail("decode", OUT_OF_MEMORY if _is_allocation_failure(exc) else exc.reason)
    except MemoryError:
        outcome.fail("decode", OUT_OF_MEMORY)
    except Exception as exc:  # a decoder bug on a hostile file must cost one file, not the run
        if _is_allocation_failure(exc):
            outcome.fail("decode", OUT_OF_MEMORY)
        else:
            log.debug("unexpected error decoding %s", outcome.path, exc_info=True)
            outcome.fail("decode", f"could not decode ({type(exc).__name__}: {str(exc)[:200]})")
    return None


def decode_query_file(path: str | os.PathLike, modality: Modality | str, cfg: PreprocessCfg | None = None) -> Outcome:
    """A query input as model input, with the preview a results page shows of it."""
    return decode(path, modality, cfg, thumbnail=True)


def _deferred_jpeg(outcome: Outcome, cfg) -> Outcome:
    """A JPEG's bytes and upright size for the encoder's batched decode, its header checked as the PIL path
    checks it (megapixel cap, aspect ratio)."""
    from xsearch.capture import exif_tags
    from xsearch.preprocess.image import _open

    try:
        with open_media(outcome.path) as handle:
            data = handle.read()
        image = _open(data, cfg[Modality.IMAGE])
        width, height = image.size
        if image.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientation, read from the header alone
            width, height = height, width  # a quarter turn: the upright size, as the PIL path reports
    except DecodeError as exc:
        return outcome.fail("decode", exc.reason)
    except OSError as exc:
        return outcome.fail("read", DecodeError.from_os_error(outcome.path, exc).reason)
    outcome.jpeg, outcome.metadata = data, {"width": width, "height": height, **exif_tags(image)}
    return outcome


def _read_head(path: str, digest: bool) -> tuple[bytes, str | None]:
    """The first bytes (for the content check) and, with ``digest``, the sha256 of the whole file."""
    with open_media(path) as handle:
        head = handle.read(HEAD_BYTES)
        if not digest:
            return head, None
        hasher = hashlib.sha256(head)
        while chunk := handle.read(HASH_CHUNK):
            hasher.update(chunk)
    return head, hasher.hexdigest()


def _identity(path: str) -> tuple | None:
    info = media_info(path)
    return None if info is None else info.identity


def _is_allocation_failure(exc: Exception) -> bool:
    """torch and FFmpeg report a refused allocation in their own words, not as ``MemoryError``."""
    text = str(exc)
    return "can't allocate memory" in text or "Cannot allocate memory" in text or getattr(exc, "errno", None) == 12
