"""Lance's and the filesystem's failures as what they mean to a user: one line naming the file and the
reason (damage, disk full, read-only, no permission), never a traceback; anything else is a bug and
surfaces as it is."""

from __future__ import annotations

import contextlib
import errno
import functools
import re
from collections.abc import Iterator
from pathlib import Path

from xsearch.errors import DatabaseDamaged, StoreError, XsearchError
from xsearch.objects import location


def one_line(text: str) -> str:
    """Lance's message without its Rust source locations, first line only."""
    text = re.sub(r",?\s*/\S+\.rs:\d+:\d+", "", text.strip().splitlines()[0] if text.strip() else "")
    return re.sub(r"^(External error: )?(lance error: )?LanceError\(\w+\): ", "", text).strip()


def storage_problem(path: Path, exc: BaseException) -> StoreError | None:
    """What a storage failure means for the user, or ``None`` when it is not one (a bug: let it surface)."""
    path = location(path)
    text = str(exc)
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or "No space left on device" in text:
        return StoreError(f"{path}: disk full; nothing more was written (what was committed before is intact)")
    if code == errno.EROFS or "Read-only file system" in text:
        return StoreError(f"{path}: read-only file system; searching works, indexing needs a writable copy")
    if code == errno.EACCES or "Permission denied" in text:
        return StoreError(f"{path}: permission denied; searching works, indexing needs write access")
    gone = re.search(r"Not found: /?(\S+\.lance)\b", text)  # a data file of a table is missing
    if gone:
        return DatabaseDamaged("/" + gone.group(1).lstrip("/"), "missing")
    missing = re.search(r"Table '(\w+)' was not found", text)
    if missing:
        return DatabaseDamaged(path if path.suffix == ".lance" else path / f"{missing.group(1)}.lance", "missing")
    if "LanceError" in text or "lance error" in text or "Corrupt" in text:
        named = [p for p in re.findall(r"(/\S+?\.(?:lance|manifest|txn))\b", text) if str(path) in p]
        return DatabaseDamaged(named[0] if named else path, one_line(text)[:200])
    return None


@contextlib.contextmanager
def translated(path: Path) -> Iterator[None]:
    """Storage failures inside become the user's one-line errors about ``path``."""
    try:
        yield
    except XsearchError:
        raise
    except Exception as exc:
        problem = storage_problem(path, exc)
        if problem is None:
            raise
        raise problem from None


def guarded(method):
    """``translated`` around a method of an object with a ``storage_path``: what its failures are reported
    against (a database's folder, a table view's ``<table>.lance``)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with translated(self.storage_path):
            return method(self, *args, **kwargs)

    return wrapper
