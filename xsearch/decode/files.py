"""One file -> model input, the same way everywhere: the indexer's workers, ``xsearch embed``
(``Collection.embed``), file query terms and few-shot examples all call ``decode``.

``decode`` never raises for a bad file: its ``Decoded`` carries the reason and the stage, so one broken
file costs one error row (or one failed line) and nothing else. The rules, in order:

1. the modality: the one given, else what the indexer's rules make of the path (``modality_of_path``:
   a folder named ``depth``, a stem ending ``_thermal``, the extension, the first bytes);
2. the content check (``xsearch.sniff``): a ``.jpg`` that holds text is refused; a container whose
   content is its modality's fallback (an ``.mp4`` with only sound) is decoded as the fallback;
3. decoding; a container without the stream asked for (``NoStreamError``) falls back the same way;
4. with ``digest``, the file's sha256, from the same bytes as the model input: a file replaced or
   rewritten while it was read (size, mtime or inode moved) is read again.

The encoder then makes each ``Decoded`` an ``Outcome``: the file's vector, or why it has none
(``Encoder.encode_decoded``).
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
class _FileState:
    """What is known of one file at a stage: its modality (the one asked for, unless the content is its
    fallback's), its sha256, what was read of it (``metadata``: size, capture tags, a preview), whether its
    bytes are ``unchanged`` since they were stored, or an error with its stage (``scan``, ``read``,
    ``decode``, ``encode``). ``task`` is the indexer's plan for the file, when it has one."""

    path: str
    modality: Modality | None
    sha256: str | None = None
    metadata: dict = field(default_factory=dict)
    unchanged: bool = False
    error: str | None = None
    stage: str | None = None
    task: object | None = None

    @property
    def ok(self) -> bool:
        """Without error, and not skipped as unchanged."""
        return self.error is None and not self.unchanged

    @property
    def thumbnail(self) -> bytes | None:
        """The preview made from the decoded pixels, when one was asked for."""
        return self.metadata.get("thumbnail")

    @property
    def message(self) -> str | None:
        """The error as a person reads it: ``path: reason``."""
        return None if self.error is None else f"{self.path}: {self.error}"

    def fail(self, stage: str, reason: str):
        self.stage, self.error = stage, reason
        return self


@dataclass
class Decoded(_FileState):
    """One file (or a chunk of a file's moments) as model input: what the decode stage makes of it, in a
    worker or here. ``tensor``: the model input; ``jpeg``: a JPEG's bytes left for the encoder's device
    (``defer_jpeg``), decoded there before encoding (``xsearch.decode.deferred``)."""

    tensor: object | None = None
    jpeg: bytes | None = None

    def fail(self, stage: str, reason: str) -> Decoded:
        self.tensor = self.jpeg = None
        return super().fail(stage, reason)


@dataclass
class Outcome(_FileState):
    """What became of one file: its unit vector (``embedding``), or ``unchanged``, or an error with its
    stage. ``Encoder.encode_decoded`` makes one of each ``Decoded``; ``Collection.embed`` returns them."""

    vector: np.ndarray | None = None

    @classmethod
    def of(cls, decoded: Decoded, vector: np.ndarray | None = None) -> Outcome:
        """``decoded``'s facts (its error, when it failed), with ``vector`` when it was encoded."""
        return cls(
            decoded.path,
            decoded.modality,
            decoded.sha256,
            decoded.metadata,
            decoded.unchanged,
            decoded.error,
            decoded.stage,
            decoded.task,
            vector,
        )

    @property
    def embedding(self) -> np.ndarray | None:
        return self.vector

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
) -> Decoded:
    """``path`` as model input for ``modality`` (``None``: the indexer's rules decide), never raising for a
    bad file. ``digest`` hashes the bytes decoded; with ``known_sha256``, a file whose bytes are unchanged
    comes back ``unchanged`` without being decoded. With ``defer_jpeg``, a JPEG image is checked (header,
    size caps) but not decoded: its bytes go to the encoder, which decodes JPEGs in batches on its device
    (``xsearch.decode.deferred``, ``xsearch.preprocess.jpeg_batch``)."""
    path = os.fspath(path)
    modality = Modality(modality) if modality else modality_of_path(path)
    if modality is None:
        return Decoded(path, None).fail("decode", UNKNOWN_TYPE)
    cfg = cfg if cfg is not None else PreprocessCfg()
    digest = digest or known_sha256 is not None
    for _ in range(attempts):
        before = _identity(path)
        decoded = _decode_once(path, modality, cfg, thumbnail, digest, known_sha256, defer_jpeg)
        if not digest or before is None or decoded.stage == "read" or _identity(path) == before:
            return decoded
        log.info("%s changed while it was read; reading it again", path)
    return Decoded(path, modality).fail("read", "the file kept changing while it was read (retried next run)")


def _decode_once(
    path: str, modality: Modality, cfg, thumbnail: bool, digest: bool, known_sha256, defer_jpeg: bool = False
) -> Decoded:
    decoded = Decoded(path, modality)
    try:
        head, decoded.sha256 = _read_head(path, digest)
    except FileNotFoundError:  # while indexing (``digest``), the scan saw it a moment ago
        return decoded.fail("read", "file not found" + (" (deleted or moved after the scan?)" if digest else ""))
    except OSError as exc:
        return decoded.fail("read", DecodeError.from_os_error(path, exc).reason)
    if not head:
        return decoded.fail("read", "file is empty (0 bytes)")
    if known_sha256 is not None and known_sha256 == decoded.sha256:
        decoded.unchanged = True  # touched or copied, same bytes: keep the stored embedding
        return decoded
    found = sniff(head)
    fallback = modality.spec.fallback
    if fallback is not None and found is not None and modality_from_family(found.family) is fallback:
        decoded.modality = fallback  # e.g. an .mp4/.mkv that holds only sound is audio
    mismatch = content_mismatch(decoded.modality, head)
    if mismatch:
        return decoded.fail("decode", mismatch)
    if defer_jpeg and decoded.modality is Modality.IMAGE and found is not None and found.format == "a JPEG image":
        return _deferred_jpeg(decoded, cfg)

    def prepare():
        try:
            return preprocess_with_metadata(path, decoded.modality, cfg, thumbnail)
        except NoStreamError:
            fallback = decoded.modality.spec.fallback
            if fallback is None:
                raise
            decoded.modality = fallback  # a container without the stream asked for: try its fallback's
            return preprocess_with_metadata(path, decoded.modality, cfg, thumbnail)

    prepared = guarded_decode(decoded, prepare)
    if prepared is not None:
        decoded.tensor, decoded.metadata = prepared.tensor, prepared.metadata
    return decoded


def guarded_decode(decoded: Decoded, run):
    """``run()``, or ``None`` with ``decoded`` failed for the reason a person reads: a decode error as it
    says, an allocation refused as ``OUT_OF_MEMORY``, a decoder bug on a hostile file as one line."""
    try:
        return run()
    except DecodeError as exc:
        decoded.fail("decode", OUT_OF_MEMORY if _is_allocation_failure(exc) else exc.reason)
    except MemoryError:
        decoded.fail("decode", OUT_OF_MEMORY)
    except Exception as exc:  # a decoder bug on a hostile file must cost one file, not the run
        if _is_allocation_failure(exc):
            decoded.fail("decode", OUT_OF_MEMORY)
        else:
            log.debug("unexpected error decoding %s", decoded.path, exc_info=True)
            decoded.fail("decode", f"could not decode ({type(exc).__name__}: {str(exc)[:200]})")
    return None


def decode_query_file(path: str | os.PathLike, modality: Modality | str, cfg: PreprocessCfg | None = None) -> Decoded:
    """A query input as model input, with the preview a results page shows of it."""
    return decode(path, modality, cfg, thumbnail=True)


def _deferred_jpeg(decoded: Decoded, cfg) -> Decoded:
    """A JPEG's bytes and upright size for the encoder's batched decode, its header checked as the PIL path
    checks it (megapixel cap, aspect ratio)."""
    from xsearch.capture import exif_tags
    from xsearch.preprocess.image import _open

    try:
        with open_media(decoded.path) as handle:
            data = handle.read()
        image = _open(data, cfg[Modality.IMAGE])
        width, height = image.size
        if image.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientation, read from the header alone
            width, height = height, width  # a quarter turn: the upright size, as the PIL path reports
    except DecodeError as exc:
        return decoded.fail("decode", exc.reason)
    except OSError as exc:
        return decoded.fail("read", DecodeError.from_os_error(decoded.path, exc).reason)
    decoded.jpeg, decoded.metadata = data, {"width": width, "height": height, **exif_tags(image)}
    return decoded


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
