"""bncourse: the package every chapter of the Batch Normalization course imports as ``bn``.

Importing it applies the book's matplotlib style.
"""

from . import autograd, check, data, functional, models, nn, plot, testing, train
from .device import available_devices, default_device, seed_everything
from .testing import rel_error

__version__ = "0.1.0"

__all__ = [
    "autograd", "available_devices", "check", "data", "default_device", "functional", "models",
    "nn", "plot", "rel_error", "seed_everything", "testing", "train",
]

plot.use_style()
