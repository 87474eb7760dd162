"""This folder is xsearch's repository, not a module of it; the file exists for one case.

Cloned as ``xsearch/``, the repository sits beside its user's scripts, and ``import xsearch`` in such a
script finds this folder first (the script's folder leads ``sys.path``). Without this file the folder would
be a namespace package, which wins over an editable install's finder, and ``from xsearch import Collection``
would fail with "unknown location". With it, the folder is the package itself, laid out as
``pyproject.toml`` maps it: its modules in ``xsearch/``, ``xsearch.cli`` in ``cli/``, ``xsearch.indexer``
in ``indexer/``. Installs never include this file.
"""

import os as _os

_here = _os.path.dirname(_os.path.abspath(__file__))
__path__ = [_os.path.join(_here, "xsearch"), _here]  # xsearch.x from xsearch/x first, then cli/ and indexer/
_init = _os.path.join(__path__[0], "__init__.py")
with open(_init, encoding="utf-8") as _source:
    exec(compile(_source.read(), _init, "exec"))  # the package's own __init__, as if imported from there
