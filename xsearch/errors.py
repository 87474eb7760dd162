"""The one place for xsearch's exceptions.

Every error a user can cause (a bad file, a wrong checkpoint, a query that cannot be answered) is an
``XsearchError`` with a message a person can act on: it names the file or input and says what is wrong.
The CLI prints ``str(error)`` and exits; it never shows a traceback unless asked to.
"""

from __future__ import annotations


class XsearchError(Exception):
    """Base class of every error xsearch raises on purpose.

    ``argument`` names the parameter the error is about, when there is one (``"target"``, ``"checkpoint"``),
    so that a front end can point at its own spelling of it (the CLI's ``--target``).
    """

    def __init__(self, message: str = "", argument: str | None = None):
        self.argument = argument
        super().__init__(message)


class CheckpointError(XsearchError):
    """A checkpoint is missing, truncated, of the wrong architecture, or failed its checksum."""


class DecodeError(XsearchError):
    """A media file could not be read or decoded into model input."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    # The OS errors every reader turns into the same plain words.
    OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError)

    @classmethod
    def from_os_error(cls, path, exc: OSError) -> DecodeError:
        if isinstance(exc, FileNotFoundError):
            return cls(path, "file not found")
        if isinstance(exc, PermissionError):
            return cls(path, "permission denied")
        if isinstance(exc, IsADirectoryError):
            return cls(path, "is a directory")
        return cls(path, str(exc) or type(exc).__name__)


class StoreError(XsearchError):
    """The database cannot be opened or written as asked (wrong model id, bad schema, ...)."""


class DatabaseDamaged(StoreError):
    """A database file is missing or unreadable: ``database damaged: FILE (what)``."""

    def __init__(self, path, what: str):
        self.path, self.what = str(path), what
        super().__init__(f"database damaged: {self.path} ({what})")


class SearchIndexError(XsearchError):
    """A FAISS index is missing, corrupt or does not match the store."""


class QueryError(XsearchError):
    """A query cannot be built or answered (zero vector, unknown item, bad weight...)."""


class UsageError(XsearchError):
    """An argument the caller got wrong (an unknown modality or model name, a bad option value).

    Raised before anything is loaded or written; ``argument`` names the parameter.
    """

    def for_argument(self, argument: str) -> UsageError:
        """The same error, attributed to ``argument`` (keeps an attribution made closer to the source)."""
        return self if self.argument else UsageError(str(self), argument)


class NoStreamError(DecodeError):
    """A container holds no stream of the kind asked for (a video file with only sound, say)."""


class ModelMismatchError(UsageError):
    """A database holds embeddings of one model and another was asked for: different spaces never mix."""

    def __init__(self, database, held: str, given: str, argument: str = "model"):
        self.database, self.held, self.given = str(database), held, given
        super().__init__(
            f"{self.database} holds embeddings of model '{held}', not '{given}'; embeddings of different models "
            "live in different spaces and cannot be mixed (use the model the database was made with, or another "
            "database)",
            argument=argument,
        )

    @classmethod
    def check(cls, database, held: str, given: str | None, argument: str = "model") -> None:
        """The one "this database holds another model" check: raises unless ``given`` is ``held`` (or
        ``None``: whatever the database holds). ``argument``: what named the other model (a model name, or
        the checkpoint that was loaded)."""
        if given is not None and given != held:
            raise cls(database, held, given, argument)


class ItemNotFound(QueryError):
    """A stored item named by id or path is not in the database."""

    def __init__(self, key, database):
        self.key = key
        super().__init__(f"no indexed item {key!r} in {database}")
