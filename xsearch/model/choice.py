"""``ModelChoice``: which weights embed, on what device and in what precision, decided once.

Every face (CLI flags, ``serve``, ``Collection(...)`` keywords) folds its model arguments into one
``ModelChoice`` at the door; nothing below reads ``$XSEARCH_CHECKPOINT``, and ``"auto"`` device and
precision are decided in one place (``resolved``), into the ``Placement`` the indexer and ``serve`` read
(``placement``).
The choice is plain data (picklable), so a Ray cluster's actors load the same weights from the same
recipe instead of receiving them over the network.

Example
-------
>>> choice = ModelChoice(checkpoint="trial.pt", architecture="tiny_test", device="cpu", precision="fp32")
>>> choice.for_database("tiny_test").architecture
'tiny_test'
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from xsearch.errors import ModelMismatchError, UsageError
from xsearch.model.config import architecture_of, get_config
from xsearch.model.pretrained import CHECKPOINT_ENV, PRETRAINED, given_checkpoint
from xsearch.precision import check_precision

DEFAULT_ARCHITECTURE = "imagebind_huge"


@dataclass(frozen=True)
class ModelChoice:
    """The model arguments, checked and resolved once.

    ``checkpoint``: a file (default: ``$XSEARCH_CHECKPOINT``, read through ``given_checkpoint``, its one
    reader; else the cached download of published weights). ``architecture``: a model name
    (``imagebind_huge``, ``tiny_test``) or a database's model id; ``None``: the database's, else what the
    checkpoint names, else ``imagebind_huge``. ``device``: ``auto``, ``cpu``, ``cuda``; ``precision``:
    ``auto``, ``fp32``, ``bf16``, ``int8`` (``xsearch.precision``); ``verify``: re-hash a cached download
    even when its size and time are unchanged.
    """

    checkpoint: str | None = None
    architecture: str | None = None
    device: str = "auto"
    precision: str = "auto"
    verify: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint", given_checkpoint(self.checkpoint))
        if self.architecture is not None:
            get_config(self.architecture)  # a misspelt name fails now, not after a checkpoint download
        check_precision(self.precision)

    @property
    def model_id(self) -> str | None:
        """The model id asked for, when one was (``None``: whatever the database or checkpoint holds)."""
        return self.architecture

    def for_database(self, held: str | None, database: str | os.PathLike = "the database") -> ModelChoice:
        """This choice for a database holding embeddings of model ``held`` (``None``: a new database).

        A different model asked for is a ``ModelMismatchError``; a database of weights that cannot be
        downloaded (a trial checkpoint's) needs its checkpoint file."""
        if held is None:
            return self
        ModelMismatchError.check(database, held, self.architecture)
        if self.checkpoint is None and held not in PRETRAINED:
            raise UsageError(
                f"{database} holds embeddings of '{held}', which has no downloadable weights: give the "
                f"checkpoint file it was made with (or set {CHECKPOINT_ENV})",
                argument="checkpoint",
            )
        return replace(self, architecture=held)

    def check_checkpoint(self, held: str, database: str | os.PathLike = "the database") -> None:
        """Read the checkpoint's header (memory-mapped: no weights are loaded) and raise a
        ``ModelMismatchError`` unless it is the model ``held`` (a trial checkpoint of another seed is not)."""
        from xsearch.model.checkpoint import open_checkpoint

        choice = self.for_database(held, database)
        architecture = architecture_of(choice.architecture) if choice.architecture else None
        source = open_checkpoint(choice.checkpoint, architecture=architecture, verify=choice.verify)
        ModelMismatchError.check(database, held, source.model_id, argument="checkpoint")

    def describe(self) -> str:
        """What will load, for a "loading model ..." line: the file when one is named (its own model is
        checked against the database's once it is read), else the model."""
        if self.checkpoint:
            return f"from {self.checkpoint}"
        return self.architecture or DEFAULT_ARCHITECTURE

    def resolved(self) -> tuple[object, str]:
        """``(torch.device, precision)`` with ``auto`` decided for this machine (``UsageError`` for a device
        that is not there): the one place both are resolved."""
        from xsearch.encoder import resolve_device, resolve_precision

        device = resolve_device(self.device)
        return device, resolve_precision(self.precision, device)

    def placement(self, gpu_decode: bool | None = None):
        """Where this model's work runs on this machine (a ``Placement``), ``auto`` resolved once; a device
        that is not there, or a precision it cannot run, is a ``UsageError`` here."""
        from xsearch.placement import Placement

        device, precision = self.resolved()
        return Placement.around(device, precision, gpu_decode)

    def load(self):
        """The ``Encoder`` (towers load when a batch first needs them)."""
        from xsearch.encoder import Encoder
        from xsearch.model.checkpoint import open_checkpoint

        device, precision = self.resolved()  # a bad device fails before the checkpoint is read
        architecture = architecture_of(self.architecture) if self.architecture else None
        source = open_checkpoint(self.checkpoint, architecture=architecture, verify=self.verify)
        return Encoder(source.model(), device=device, precision=precision, towers=source)
