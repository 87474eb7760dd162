"""Path rules: what a file is indexed, embedded or queried as, from its path (and, for a file without an
extension, its first bytes), and the file helpers the rules and the servers share.

The rules' data is the modality table (``xsearch.modalities``); the first rule that applies wins:
an assigned folder or file (``--as``), a naming convention (a folder named ``depth``, a stem ending
``_thermal``), the extension, the first bytes (``xsearch.sniff``). ``content_mismatch`` is the check that a
file's bytes may be what its name says.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path

import numpy as np

from xsearch.modalities import REGISTRY, Modality
from xsearch.objects import is_object_uri
from xsearch.sniff import HEAD_BYTES, Family, sniff
from xsearch.sources import media_info, open_media


def modality_from_extension(path: str | os.PathLike) -> Modality | None:
    """The modality an extension names on its own (image, video, audio, text), or ``None``."""
    suffix = Path(path).suffix.lower()
    for entry in REGISTRY.values():
        if suffix in entry.extensions:
            return entry.modality
    return None


def modality_from_convention(path: str) -> Modality | None:
    """A folder named like a convention modality, or a stem ending ``_<modality>`` (``room1_depth.png``)."""
    parts = [p.lower() for p in path.split(os.sep)]
    stem, suffix = os.path.splitext(parts[-1])
    for entry in REGISTRY.values():
        types = entry.convention_extensions
        if not entry.convention or (suffix and types and suffix not in types):
            continue  # a name claims only files of its modality's types (depth/README.txt stays text)
        if entry.name in parts[:-1] or stem.endswith(f"_{entry.name}"):
            return entry.modality
    return None


def modality_from_family(family: Family | None) -> Modality | None:
    """The modality an extensionless file of ``family`` is indexed as, or ``None``."""
    for entry in REGISTRY.values():
        if family is not None and entry.sniffed_from is family:
            return entry.modality
    return None


def is_regular_file(path: str) -> bool:
    """Whether ``path`` is a regular file now: safe to open for reading (a pipe or device would block)."""
    return media_info(path) is not None


def is_hidden(path: str, below: str = "") -> bool:
    """Whether a name in ``path`` past the folder ``below`` starts with a dot (``.cache/x.jpg``, macOS's
    ``._x.jpg``): what a scan leaves out unless ``--hidden``, and never the original of a copy."""
    return "/." in path[len(below.rstrip("/")) :]


def is_under(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or inside it (both absolute)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _assigned(path: str, assigned: dict[str, Modality]) -> Modality | None:
    """The modality of the deepest assigned folder (or file) that holds ``path``."""
    best = None
    for root, modality in assigned.items():
        if is_under(path, root) and (best is None or len(root) > len(best[0])):
            best = (root, modality)
    return best[1] if best else None


def _sniffed(path: str) -> Modality | None:
    try:
        with open_media(path) as handle:
            found = sniff(handle.read(HEAD_BYTES))
    except OSError:
        return None
    return modality_from_family(found.family if found else None)


def modality_of_path(path: str | os.PathLike, assigned: dict[str, Modality] | None = None) -> Modality | None:
    """What a file is indexed or embedded as, first rule that applies, or ``None`` when no rule does:
    an ``assigned`` folder or file (absolute paths), a naming convention, the extension, and for a file
    without an extension its first bytes."""
    path = os.fspath(path) if is_object_uri(path) else os.path.abspath(os.fspath(path))
    modality = _assigned(path, assigned or {}) or modality_from_convention(path) or modality_from_extension(path)
    if modality is None and not os.path.splitext(os.path.basename(path))[1]:
        modality = _sniffed(path)
    return modality


def content_mismatch(modality: Modality, head: bytes) -> str | None:
    """Why a file's content cannot be ``modality`` (its table entry's ``accepts``), or ``None`` when it may
    be or cannot be told."""
    found = sniff(head)
    if found is None:
        return None  # the decoder says what is wrong, if anything (e.g. text that is not UTF-8)
    if found.family in Modality(modality).spec.accepts:
        return None
    return f"its content is {found.format}, not {modality}"


_RE2_SPECIAL = frozenset("\\.+*?()|[]{}^$")


def glob_regex(pattern: str) -> str | None:
    """``pattern`` as an anchored RE2 expression with fnmatch's meaning (``*`` and ``?`` cross ``/``), for
    Arrow's vectorised match; ``None`` for a pattern with a ``[...]`` class, whose rules stay fnmatch's own."""
    if "[" in pattern:
        return None
    wild = {"*": ".*", "?": "."}
    body = "".join(wild.get(c) or (f"\\{c}" if c in _RE2_SPECIAL else c) for c in pattern)
    return f"(?s)^{body}$"


def glob_mask(uris, pattern: str):
    """Which of ``uris`` (an Arrow string array) match ``pattern``, an absolute path glob
    (``SearchOptions.path``), as a numpy bool array."""
    import pyarrow.compute as pc  # here: decode workers import this module, and must not load pyarrow

    regex = glob_regex(pattern)
    if regex is not None:  # in Arrow's C++, without a Python string per uri
        return pc.match_substring_regex(uris, regex).to_numpy(zero_copy_only=False)
    match = re.compile(fnmatch.translate(pattern)).match  # fnmatch's own rule, compiled once for every uri
    return np.array([match(uri) is not None for uri in uris.to_pylist()], dtype=bool)
