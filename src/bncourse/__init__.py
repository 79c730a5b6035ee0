"""bncourse: the package every chapter of the Batch Normalization course imports as ``bn``.

Three parts, each importing only the ones before it:

* **the library** (this folder): what batch normalization is, usable outside the course.
  ``kernels`` (the readable kernels), ``tuned`` (the same math, fewer passes over memory),
  ``autograd``, ``compiled`` (``torch.compile``), ``streaming`` (two loops in C++ for the CPU),
  ``functional`` (``batch_norm`` with torch's signature), ``layers`` and ``nn`` (drop-ins for
  torch's modules), ``sync``, ``smallbatch``, ``fold``.
* **the laboratory** (``lab/``): what the chapters measure with: devices and seeds, data, models,
  the trainer that trains many seeds at once, plots, and one module per chapter topic.
* **the teaching tools** (``teach/``): the exercise checks, the instructor's side, the book's
  Sphinx extension.

A notebook imports it once, ``import bncourse as bn``, and reaches every module as ``bn.NAME``
(``bn.functional``, ``bn.models``, ``bn.check``, ...). ``bn.train`` is the trainer (many seeds at
once), ``bn.setup``, ``bn.seed_everything`` and ``bn.generator`` set the seeds (all shifted by
``BNCOURSE_SEED_OFFSET``). Importing it applies the book's figure style.
"""

import importlib

from . import autograd, compiled, fold, functional, kernels, layers, nn, smallbatch, streaming, sync, tuned
from .lab import (
    benefits,
    convnets,
    data,
    device,
    diagram,
    distributed,
    dropout_shift,
    experiments,
    finetune,
    flow,
    hardware,
    inference,
    landscape,
    models,
    plot,
    residual,
    scaling,
    shift,
    stack,
    testing,
    trainer,
    weight_decay,
)
from .lab.device import (
    available_devices,
    default_device,
    generator,
    rng,
    seed_everything,
    seed_offset,
    setup,
    shifted,
)
from .lab.testing import rel_error
from .lab.trainer import evaluate, train
from .teach import check
from .teach.glue import glue
from .teach.quiz import quiz

__version__ = "0.1.0"


def __getattr__(name: str):
    """``bn.bench`` is imported on first use, so that ``python -m bncourse.lab.bench`` runs it fresh."""
    if name == "bench":
        return importlib.import_module(".lab.bench", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


plot.use_style()
