"""Reading ``.npy`` arrays safely (no pickles) with messages that say what is wrong."""

from __future__ import annotations

import io
import math

import numpy as np

from xsearch.errors import DecodeError
from xsearch.sources import open_media

NPY_MAGIC = b"\x93NUMPY"


def load_npy(name: str, max_elements: int) -> np.ndarray:
    """``np.load`` without pickles; a file that is not ``.npy`` at all is told apart from a damaged one.

    The header is checked before any data is read: an array above ``max_elements``, or one the file is too
    short to hold (a sparse or truncated file), is refused without allocating it.
    """
    try:
        with open_media(name) as handle:
            if handle.read(len(NPY_MAGIC)) != NPY_MAGIC:
                raise DecodeError(name, "not a NumPy .npy file (no .npy header)")
            handle.seek(0)
            _check_header(name, handle, max_elements)
            handle.seek(0)
            # numpy reads a local file with fromfile; an object's bytes (bounded by the header check) from memory
            source = handle if isinstance(handle, io.BufferedReader) else io.BytesIO(handle.read())
            return np.load(source, allow_pickle=False)
    except DecodeError.OS_ERRORS as exc:
        raise DecodeError.from_os_error(name, exc) from None
    except ValueError as exc:
        if "pickle" in str(exc) or "Object arrays" in str(exc):  # numpy's words before and after 2.4
            raise DecodeError(name, "the .npy file holds Python objects, not numbers (refused: unsafe)") from None
        raise DecodeError(name, f"damaged .npy file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DecodeError(name, f"damaged .npy file ({exc})") from None


def _check_header(name: str, handle, max_elements: int) -> None:
    version = np.lib.format.read_magic(handle)
    # Versions 2 and 3 differ only in the header's text encoding; both have a 4-byte length.
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(handle)
    elements = math.prod(shape)
    if elements > max_elements:
        raise DecodeError(name, f"array of shape {shape} has {elements:,} values, above the {max_elements:,} cap")
    if dtype.hasobject:
        return  # refused by np.load with its own message
    needed = handle.tell() + elements * dtype.itemsize
    position = handle.tell()
    size = handle.seek(0, io.SEEK_END)  # a local file's size, or an object's
    handle.seek(position)
    if size < needed:
        raise DecodeError(name, f"truncated .npy file: its header promises {needed:,} bytes, the file has {size:,}")
