"""The installed ``xsearch`` console script, for tests that run it as a user would (signals, pipes, exit
codes): where pip put this interpreter's scripts (a virtual environment's ``bin``, a user install's
``~/.local/bin``...), else the one on ``PATH``."""

from __future__ import annotations

import shutil
import sysconfig

import pytest


def xsearch_script() -> str:
    found = shutil.which("xsearch", path=sysconfig.get_path("scripts")) or shutil.which("xsearch")
    if found is None:
        pytest.skip("the xsearch console script is not installed for this interpreter (pip install -e . makes it)")
    return found
