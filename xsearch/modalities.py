"""The modality table: everything xsearch knows about a modality, in one entry.

A *modality* is what a user indexes and searches (``image``, ``video``, ``audio``...). A *tower* is the
ImageBind encoder that embeds it; its value is the key the official checkpoint uses (``vision`` serves both
images and videos). Each modality has one ``ModalitySpec`` in ``REGISTRY``: its tower, the extensions that
name it, whether folder/stem conventions name it, the content families its files may hold, its
preprocessing (function and config), how a results page previews it, and what to try when a file holds
no stream of it. The path rules (``xsearch.paths``), the content check, preprocessing, the encoder, the
query constructors, the contact sheet and the CLI's options all read this table; adding a modality is one
``register`` call.

This module stays light (no torch, no decoders): preprocessing functions are named as ``"module:function"``
and imported on first use, so ``xsearch --help`` does not pay for them.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from xsearch.errors import UsageError
from xsearch.sniff import Family


class Tower(str, enum.Enum):
    """The six ImageBind encoders, valued by their checkpoint keys."""

    VISION = "vision"
    TEXT = "text"
    AUDIO = "audio"
    DEPTH = "depth"
    THERMAL = "thermal"
    IMU = "imu"

    def __str__(self) -> str:
        return self.value

    @property
    def spec(self) -> TowerSpec:
        return TOWERS[self]


@dataclass(frozen=True)
class TowerSpec:
    """One tower's facts, read by the model, the encoder and the indexer."""

    batch_ndim: int  # dimensions of a plain batch; one more means a leading clips axis ([B, S, ...])
    gpu_batch: int  # files per encoder batch on a GPU (the indexer's default there)
    int8: bool = True  # exported to ONNX int8 on CPUs without bf16


TOWERS: dict[Tower, TowerSpec] = {
    Tower.VISION: TowerSpec(batch_ndim=5, gpu_batch=128),
    Tower.TEXT: TowerSpec(batch_ndim=2, gpu_batch=512),
    Tower.AUDIO: TowerSpec(batch_ndim=4, gpu_batch=96),
    Tower.DEPTH: TowerSpec(batch_ndim=4, gpu_batch=128),
    Tower.THERMAL: TowerSpec(batch_ndim=4, gpu_batch=128),
    # The IMU tower's windowing (``unfold``) does not export faithfully, and it is 3% of ImageBind's
    # weights: it runs in float on PyTorch.
    Tower.IMU: TowerSpec(batch_ndim=3, gpu_batch=256, int8=False),
}


class Preview(str, enum.Enum):
    """How a results page shows an item of a modality."""

    THUMBNAIL = "thumbnail"  # a JPEG made at index time from the decoded pixels
    AUDIO = "audio"  # a picture of the waveform and a short audio player
    TEXT = "text"  # the first lines
    LABEL = "label"  # a caption only (IMU recordings)


class _ModalityType(type):
    """Lets ``for m in Modality`` and ``len(Modality)`` walk the registered modalities, enum-style."""

    def __iter__(cls) -> Iterator[Modality]:
        return iter(list(REGISTRY))

    def __len__(cls) -> int:
        return len(REGISTRY)

    def __contains__(cls, value) -> bool:
        return str(value) in _BY_NAME


class Modality(str, metaclass=_ModalityType):
    """What an indexed item or a query input is: an open enumeration over ``REGISTRY``.

    Behaves like a ``str`` enum (``Modality.IMAGE``, ``Modality("image")``, ``.value``, iteration, ``is``
    comparisons) but can grow: ``register`` adds a member. ``Modality("smell")`` raises ``UsageError``.
    """

    IMAGE: Modality
    VIDEO: Modality
    TEXT: Modality
    AUDIO: Modality
    DEPTH: Modality
    THERMAL: Modality
    IMU: Modality

    def __new__(cls, value) -> Modality:
        if isinstance(value, Modality):
            return value
        name = str(value).strip().lower()
        try:
            return _BY_NAME[name]
        except KeyError:
            names = ", ".join(_BY_NAME)
            raise UsageError(f"unknown modality {str(value)!r} (expected one of: {names})") from None

    @classmethod
    def _define(cls, name: str) -> Modality:
        member = str.__new__(cls, name)
        _BY_NAME[name] = member
        return member

    @property
    def value(self) -> str:
        return str.__str__(self)

    @property
    def name(self) -> str:
        return self.value.upper()

    @property
    def spec(self) -> ModalitySpec:
        return REGISTRY[self]

    @property
    def tower(self) -> Tower:
        """The encoder that embeds this modality."""
        return self.spec.tower

    @classmethod
    def parse(cls, value: str | Modality) -> Modality:
        """``Modality`` from its name; ``UsageError`` lists the valid names."""
        return cls(value)

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"Modality.{self.name}"

    def __reduce__(self):
        binding = REGISTRY[self].binding if self in REGISTRY else None
        if binding is not None:  # a database's own modality: a worker process registers it from its record
            return (_resolve("xsearch.bind.binding:registered"), (binding.record(),))
        return (Modality, (self.value,))  # unpickles to the registered member (worker processes)

    __hash__ = str.__hash__


_BY_NAME: dict[str, Modality] = {}


@dataclass(frozen=True)
class ModalitySpec:
    """One modality's rules, preprocessing and presentation.

    ``preprocess`` is ``fn(path, cfg, thumbnail) -> Preprocessed`` (or ``"module:function"`` naming it);
    ``make_cfg`` is ``fn(model_cfg) -> cfg``, so input shapes come from the model's config; ``cfg_type``
    is the config's class (``"module:Class"`` or the class).
    """

    modality: Modality
    tower: Tower | None  # None: a bound modality whose adapter reads the preprocessed input itself
    preprocess: Callable | str
    make_cfg: Callable | str
    extensions: frozenset[str] = frozenset()  # recognised by extension alone
    convention: bool = False  # a folder named like the modality, or a stem ending _<modality>, names it
    # The file types a naming convention claims (empty: any): a depth/ folder's README.txt stays text.
    convention_extensions: frozenset[str] = frozenset()
    accepts: frozenset[Family] = frozenset()  # content families its files may hold
    sniffed_from: Family | None = None  # an extensionless file of this family is indexed as this modality
    preview: Preview = Preview.LABEL
    fallback: Modality | None = None  # when a file holds no stream of this modality (NoStreamError)
    query_input: str = "file"  # how a query names an input: a "file" path, or the "text" itself
    # With moments on, files of this modality are cut into segments, decoded this many segments a chunk
    # (``None``: it has no moments). A chunk's model input stays near 20 MB of audio clips (300 s at 6 s)
    # or 55 MB of video clips (30 s: 9 clip-crops of 2 x 224 x 224 per segment, float32).
    moment_chunk: int | None = None
    help: str = ""
    # A modality joined to the shared space by ``xsearch bind`` (an ``xsearch.bind.Binding``): its tower's
    # output, or without a tower (``tower=None``) its preprocessed input, goes through the binding's adapter.
    binding: object | None = None

    @property
    def has_moments(self) -> bool:
        return self.moment_chunk is not None

    @property
    def name(self) -> str:
        return self.modality.value

    def preprocess_fn(self) -> Callable:
        return _resolve(self.preprocess)

    def cfg_for(self, model_cfg):
        return _resolve(self.make_cfg)(model_cfg)


def _resolve(target: Callable | str) -> Callable:
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    found = importlib.import_module(module)
    for part in attr.split("."):  # "ImageCfg.for_model"
        found = getattr(found, part)
    return found


REGISTRY: dict[Modality, ModalitySpec] = {}


def register(spec: ModalitySpec, *, replace: bool = False) -> ModalitySpec:
    """Add a modality to the table (``define`` its name first); returns the spec."""
    if spec.modality in REGISTRY and not replace:
        raise UsageError(f"modality {spec.name!r} is already registered")
    REGISTRY[spec.modality] = spec
    return spec


def unregister(modality: Modality) -> None:
    """Remove a modality that ``register`` added (tests, plug-ins that unload)."""
    REGISTRY.pop(modality, None)
    _BY_NAME.pop(modality.value, None)


def define(name: str) -> Modality:
    """A new ``Modality`` member named ``name`` (lower case, a word); register its spec next."""
    name = name.strip().lower()
    if not name.isidentifier():
        raise UsageError(f"modality name {name!r} must be a single word")
    if name in _BY_NAME:
        return _BY_NAME[name]
    return Modality._define(name)


for _name in ("image", "video", "text", "audio", "depth", "thermal", "imu"):
    setattr(Modality, _name.upper(), define(_name))

_P = "xsearch.preprocess"
_IMAGE_EXT = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
_MAP_FAMILIES = frozenset({Family.IMAGE, Family.ARRAY})
_MAP_EXT = _IMAGE_EXT | {".npy"}

for _spec in (
    ModalitySpec(
        Modality.IMAGE,
        Tower.VISION,
        preprocess=f"{_P}.image:prepare",
        make_cfg=f"{_P}.image:ImageCfg.for_model",
        extensions=_IMAGE_EXT,
        accepts=frozenset({Family.IMAGE}),
        sniffed_from=Family.IMAGE,
        preview=Preview.THUMBNAIL,
        help="image file",
    ),
    ModalitySpec(
        Modality.VIDEO,
        Tower.VISION,
        preprocess=f"{_P}.video:prepare",
        make_cfg=f"{_P}.video:VideoCfg.for_model",
        extensions=frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi"}),
        accepts=frozenset({Family.VIDEO}),
        sniffed_from=Family.VIDEO,
        preview=Preview.THUMBNAIL,
        fallback=Modality.AUDIO,
        moment_chunk=5,
        help="video file",
    ),
    ModalitySpec(
        Modality.TEXT,
        Tower.TEXT,
        preprocess=f"{_P}.text:prepare",
        make_cfg=f"{_P}.text:TextCfg.for_model",
        extensions=frozenset({".txt"}),
        accepts=frozenset({Family.TEXT}),
        preview=Preview.TEXT,
        query_input="text",
        help="text",
    ),
    ModalitySpec(
        # Sound inside a video container (an .mp4 with only sound) is common: audio accepts video families,
        # and the decoder says whether an audio stream exists.
        Modality.AUDIO,
        Tower.AUDIO,
        preprocess=f"{_P}.audio:prepare",
        make_cfg=f"{_P}.audio:AudioCfg.for_model",
        extensions=frozenset({".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac"}),
        accepts=frozenset({Family.AUDIO, Family.VIDEO}),
        sniffed_from=Family.AUDIO,
        preview=Preview.AUDIO,
        moment_chunk=50,
        help="audio file",
    ),
    # Depth, thermal and IMU files share extensions with images and arrays: never guessed from the extension,
    # only from a naming convention or an explicit assignment.
    ModalitySpec(
        Modality.DEPTH,
        Tower.DEPTH,
        preprocess=f"{_P}.single_channel:prepare_depth",
        make_cfg=f"{_P}.single_channel:depth_cfg",
        convention=True,
        convention_extensions=_MAP_EXT,
        accepts=_MAP_FAMILIES,
        preview=Preview.THUMBNAIL,
        help="depth (disparity) map",
    ),
    ModalitySpec(
        Modality.THERMAL,
        Tower.THERMAL,
        preprocess=f"{_P}.single_channel:prepare_thermal",
        make_cfg=f"{_P}.single_channel:thermal_cfg",
        convention=True,
        convention_extensions=_MAP_EXT,
        accepts=_MAP_FAMILIES,
        preview=Preview.THUMBNAIL,
        help="thermal image",
    ),
    ModalitySpec(
        Modality.IMU,
        Tower.IMU,
        preprocess=f"{_P}.imu:prepare",
        make_cfg=f"{_P}.imu:ImuCfg.for_model",
        convention=True,
        convention_extensions=frozenset({".npy", ".csv"}),
        accepts=frozenset({Family.ARRAY, Family.TEXT}),
        preview=Preview.THUMBNAIL,
        help="IMU recording (.npy, .csv)",
    ),
):
    register(_spec)


def spec(modality: Modality | str) -> ModalitySpec:
    """The table entry of ``modality`` (or its name)."""
    return REGISTRY[Modality(modality)]


def parse_modalities(value: str | list) -> list[Modality]:
    """``"image, audio"`` (or a list of names) -> modalities, in order; ``UsageError`` names a bad one."""
    names = value.split(",") if isinstance(value, str) else list(value)
    return [Modality(str(name).strip()) for name in names if str(name).strip()]


def as_tower(value: Tower | Modality | str) -> Tower:
    """The tower for a tower, a modality, or either's name (``"image"`` -> ``Tower.VISION``)."""
    if isinstance(value, Tower):
        return value
    if isinstance(value, Modality):
        return value.tower
    name = str(value).strip().lower()
    if name in Tower._value2member_map_:
        return Tower(name)
    return Modality(name).tower


__all__ = [
    "REGISTRY",
    "Modality",
    "ModalitySpec",
    "Preview",
    "Tower",
    "TowerSpec",
    "TOWERS",
    "as_tower",
    "define",
    "parse_modalities",
    "register",
    "spec",
    "unregister",
]

# What every process has on import (decode workers included); ``register`` adds to the table of this one only.
BUILT_IN: frozenset[str] = frozenset(m.value for m in REGISTRY)

del _name, _spec
