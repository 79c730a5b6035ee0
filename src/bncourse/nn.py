"""Drop-in replacements for PyTorch's batch norm modules.

``BatchNorm1d/2d/3d`` (:mod:`bncourse.layers`) take the constructor, parameters, buffers and
``state_dict`` of ``torch.nn.BatchNorm*d``; ``SyncBatchNorm`` (:mod:`bncourse.sync`) those of
``torch.nn.SyncBatchNorm``; ``GhostBatchNorm`` and ``BatchRenorm`` (:mod:`bncourse.smallbatch`) train
on fewer examples than the batch. ``bn_layers(model)`` lists a model's batch norm layers.
"""

from .layers import BATCH_NORMS, BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm, bn_layers
from .smallbatch import BatchRenorm, GhostBatchNorm
from .sync import SyncBatchNorm

__all__ = ["BATCH_NORMS", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchRenorm", "GhostBatchNorm",
           "SyncBatchNorm", "_BatchNorm", "bn_layers"]
