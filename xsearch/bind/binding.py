"""A database's own modalities: what ``xsearch bind`` learned, kept beside the tables, and registered in every
process that opens the database.

A binding is two side files: ``modalities/NAME.json`` (the record: the anchor, the features, the model the
adapter was trained against, the adapter's shape and checksum, the training report) and the adapter's
weights, ``modalities/NAME-<sha256 prefix>.pt``. The weights are written first under a name of their own and
the record last, so a killed ``bind`` leaves the previous binding (or none) whole: a record always names
weights that are there, with the checksum they have.

This module stays light (no torch): opening a database registers its modalities without loading a model.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass, field

from xsearch.errors import DatabaseDamaged, UsageError
from xsearch.modalities import BUILT_IN, REGISTRY, Modality, ModalitySpec, Preview, define, register

log = logging.getLogger(__name__)

FOLDER = "modalities"
RAW = "raw"  # features learned from the array itself, by a small trainable encoder
# Frozen towers a new modality's files may be read by, named by the built-in modality whose reading they get.
TOWER_FEATURES = ("image", "depth", "thermal", "audio", "imu")
FEATURES = (RAW, *TOWER_FEATURES)


@dataclass(frozen=True)
class Binding:
    """One bound modality: ``name`` joined to the space of ``model_id`` through pairs with ``anchor``."""

    name: str
    anchor: str  # a built-in modality
    features: str  # RAW, or one of TOWER_FEATURES
    model_id: str
    embed_dim: int
    adapter: dict  # the adapter's shape (``xsearch.bind.adapter.build``)
    sha256: str  # of the weights file
    raw_input: dict | None = None  # with RAW: how arrays are shaped for the encoder (``xsearch.bind.raw.RawCfg``)
    report: dict = field(default_factory=dict)
    files: object = field(default=None, compare=False, repr=False)  # the database's SideFiles, for the weights

    @property
    def weights_name(self) -> str:
        return f"{FOLDER}/{self.name}-{self.sha256[:16]}.pt"

    @property
    def record_name(self) -> str:
        return f"{FOLDER}/{self.name}.json"

    def record(self) -> dict:
        """What the record file holds (JSON-ready)."""
        out = asdict(self)
        out.pop("files")
        return out

    @classmethod
    def from_record(cls, record: dict, files=None) -> Binding:
        known = {k: record[k] for k in cls.__dataclass_fields__ if k in record and k != "files"}
        return cls(**known, files=files)

    # ---- as a modality ------------------------------------------------------------------------------------

    def spec(self) -> ModalitySpec:
        """The modality table's entry: read as its features' tower reads a file (RAW: as an array), then
        through the adapter (``Encoder``)."""
        modality = define(self.name)
        help_text = f"bound to {self.anchor} by xsearch bind ({self.features} features)"
        if self.features == RAW:
            from xsearch.bind.raw import RawCfg

            cfg = RawCfg(**self.raw_input)
            return ModalitySpec(
                modality,
                None,
                preprocess="xsearch.bind.raw:prepare",
                make_cfg=lambda _model_cfg: cfg,
                extensions=frozenset(),
                accepts=RawCfg.ACCEPTS,
                preview=Preview.LABEL,
                help=help_text,
                binding=self,
            )
        reading = Modality(self.features).spec
        return ModalitySpec(
            modality,
            reading.tower,
            preprocess=reading.preprocess,
            make_cfg=reading.make_cfg,
            accepts=reading.accepts,
            preview=reading.preview,
            help=help_text,
            binding=self,
        )

    @property
    def feature_modality(self) -> Modality | None:
        """The built-in modality whose tower reads this one's files (``None`` for RAW)."""
        return None if self.features == RAW else Modality(self.features)

    # ---- the adapter's weights ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The adapter's weights, checked against the record's checksum."""
        import torch

        data = self.files.read_bytes(self.weights_name) if self.files is not None else None
        where = self.files.where(self.weights_name) if self.files is not None else self.weights_name
        if data is None:
            raise DatabaseDamaged(where, f"the adapter of modality {self.name!r} is missing (run xsearch bind again)")
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise DatabaseDamaged(where, f"the adapter of modality {self.name!r} does not match its checksum")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def registered(record: dict) -> Modality:
    """The modality of ``record``, registered in this process first when it is not (how worker processes,
    which unpickle it, learn a database's own modality)."""
    return register_binding(Binding.from_record(record))


def bindings(files) -> list[Binding]:
    """The modalities the database at ``files`` (its ``SideFiles``) binds, by name."""
    found = []
    for name in sorted(files.names(FOLDER, ".json")):
        try:
            found.append(Binding.from_record(json.loads(files.read_text(name)), files))
        except (ValueError, TypeError, KeyError) as exc:
            raise DatabaseDamaged(files.where(name), f"unreadable binding ({exc})") from None
    return found


def register_bindings(files, model_id: str) -> list[Modality]:
    """Register in this process the modalities the database binds (a re-bound one replaces the entry this
    process had). A binding trained against another model than the database's is refused: it is not
    registered, and the reason is logged."""
    out = []
    for binding in bindings(files):
        if binding.model_id != model_id:
            where = files.where(binding.record_name)
            log.warning(
                "%s: modality %r was bound against model %r, not this database's %r: left out (run xsearch bind again)",
                where,
                binding.name,
                binding.model_id,
                model_id,
            )
            continue
        if binding.name in BUILT_IN:
            raise DatabaseDamaged(files.where(binding.record_name), f"binds the built-in name {binding.name!r}")
        out.append(register_binding(binding))
    return out


def register_binding(binding: Binding) -> Modality:
    """Register ``binding``'s modality in this process, in place of an earlier binding of the name."""
    held = REGISTRY.get(Modality(binding.name)) if binding.name in Modality else None
    if held is None or held.binding != binding:
        register(binding.spec(), replace=held is not None)
    return Modality(binding.name)


def save_binding(files, binding: Binding, weights: bytes) -> Binding:
    """Store ``binding`` with its ``weights`` (weights first, the record last), then drop the weights of the
    binding it replaces. Returns it with its files."""
    if hashlib.sha256(weights).hexdigest() != binding.sha256:
        raise UsageError("internal: the weights do not match the binding's checksum")
    files.make_folder(FOLDER)
    previous = {b.name: b for b in bindings(files)}.get(binding.name)
    files.write_bytes(binding.weights_name, weights)
    files.write_text(binding.record_name, json.dumps(binding.record(), indent=1))
    if previous is not None and previous.weights_name != binding.weights_name:
        files.remove(previous.weights_name)
    return Binding.from_record(binding.record(), files)
