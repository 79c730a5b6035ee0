"""Numbers from the run into the prose: myst-nb's ``glue``, without needing myst-nb in the kernel.

A cell calls ``bn.glue("bn_acc", acc)``; the page's text cites it by path,
``{glue:text}`` with ``05b_figure1_regularization.ipynb::bn_acc:.1%`` in backticks, so the sentence
always states what the run that built the page measured. The output is exactly what
``myst_nb.glue(name, value, display=False)`` writes (a hidden display with the ``scrapbook``
metadata), so the notebook runs where myst-nb is not installed (Colab, Binder) and the book still
finds the value.
"""

from __future__ import annotations

import numbers

import torch
from IPython.display import display

GLUE_PREFIX = "application/papermill.record/"  # myst_nb.ext.glue.GLUE_PREFIX

__all__ = ["glue"]


def _plain(value):
    """A Python number or string whose ``repr`` a format spec can parse back."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"glue takes one number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return value
    if hasattr(value, "item"):  # a NumPy scalar
        return _plain(value.item())
    raise TypeError(f"glue takes a number or a string, got {type(value).__name__}")


def glue(name: str, value) -> float | int | str:
    """Store ``value`` (a number or a string) under ``name`` for the book's ``{glue:text}`` role, and
    return it as a plain Python value. Nothing shows in the notebook."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"glue names are identifiers (letters, digits, _), got {name!r}")
    value = _plain(value)
    display({GLUE_PREFIX + "text/plain": repr(value)}, raw=True,
            metadata={"scrapbook": {"name": name, "mime_prefix": GLUE_PREFIX}})
    return value
