"""bncourse: the package every chapter of the Batch Normalization course imports as ``bn``.

Importing it applies the book's matplotlib style.
"""

import importlib

from . import (
    autograd,
    benefits,
    check,
    compiled,
    convnets,
    data,
    diagram,
    distributed,
    dropout_shift,
    experiments,
    finetune,
    flow,
    fold,
    functional,
    hardware,
    inference,
    landscape,
    models,
    nn,
    plot,
    residual,
    scaling,
    sgd,
    shift,
    smallbatch,
    sync,
    testing,
    train,
    tuned,
    weight_decay,
)
from .device import available_devices, default_device, seed_everything, setup
from .testing import rel_error

__version__ = "0.1.0"


def __getattr__(name: str):
    """``bn.bench`` is imported on first use, so that ``python -m bncourse.bench`` runs it fresh."""
    if name == "bench":
        return importlib.import_module(".bench", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


plot.use_style()
