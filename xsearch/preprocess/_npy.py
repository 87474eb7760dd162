"""Reading ``.npy`` arrays safely (no pickles) with messages that say what is wrong."""

from __future__ import annotations

import numpy as np

from xsearch.errors import DecodeError

NPY_MAGIC = b"\x93NUMPY"


def load_npy(name: str) -> np.ndarray:
    """``np.load`` without pickles; a file that is not ``.npy`` at all is told apart from a damaged one."""
    try:
        with open(name, "rb") as handle:
            if handle.read(len(NPY_MAGIC)) != NPY_MAGIC:
                raise DecodeError(name, "not a NumPy .npy file (no .npy header)")
        return np.load(name, allow_pickle=False)
    except DecodeError.OS_ERRORS as exc:
        raise DecodeError.from_os_error(name, exc) from None
    except ValueError as exc:
        if "pickle" in str(exc) or "Object arrays" in str(exc):  # numpy's words before and after 2.4
            raise DecodeError(name, "the .npy file holds Python objects, not numbers (refused: unsafe)") from None
        raise DecodeError(name, f"damaged .npy file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DecodeError(name, f"damaged .npy file ({exc})") from None
