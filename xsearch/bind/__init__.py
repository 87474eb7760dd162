"""Bind a new modality into the shared space: ``xsearch bind`` trains an adapter from paired examples.

``binding`` (what a database keeps and registers, torch-free), ``raw`` (arrays as the trainable encoder
reads them), ``adapter`` (the trainable modules), ``pairs`` (the pairs file), ``train`` (the training and
its report).
"""

from xsearch.bind.binding import FEATURES, Binding, bindings, register_bindings

__all__ = ["FEATURES", "Binding", "bindings", "register_bindings"]
