"""``BatchNorm1d/2d/3d``: drop-in replacements for PyTorch's, built on :mod:`bncourse.functional`.

Same constructor (``bias=False`` keeps only the scale, as in recent PyTorch), parameters, buffers
and ``state_dict`` keys as ``torch.nn.BatchNorm*d``, so either loads the other's state; train/eval
follows ``self.training``. One addition: ``compiled=True`` (keyword only) runs the kernels compiled
by ``torch.compile`` (:mod:`bncourse.compiled`); the default runs the eager kernels.
"""

import torch
from torch import nn

from . import functional as F

__all__ = ["BATCH_NORMS", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "bn_layers"]


class _BatchNorm(nn.Module):
    _version = 2  # as torch's: version 2 added num_batches_tracked
    _input_dims: tuple[int, ...] = ()
    _layout = ""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
        compiled: bool = False,
    ):
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.compiled = compiled
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in self._input_dims:
            want = " or ".join(f"{d}D" for d in self._input_dims)
            raise ValueError(
                f"{name} expected {want} input {self._layout}, got {x.dim()}D input of shape "
                f"{tuple(x.shape)}"
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{name}({self.num_features}) expected {self.num_features} channels in dim 1, "
                f"got {x.shape[1]} (input of shape {tuple(x.shape)})"
            )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        # Without running statistics, eval mode has nothing else to use: batch statistics.
        use_batch_stats = self.training or self.running_mean is None
        update = not self.training or self.track_running_stats
        return F.batch_norm(
            input,
            self.running_mean if update else None,
            self.running_var if update else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
            compiled=self.compiled,
        )

    def extra_repr(self) -> str:
        return (
            "{num_features}, eps={eps}, momentum={momentum}, affine={affine}, "
            "bias={bias}, track_running_stats={track_running_stats}".format(
                **self.__dict__, bias=self.bias is not None
            )
            + (", compiled=True" if self.compiled else "")
        )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, *args):
        # As torch's: a state_dict saved before num_batches_tracked existed loads with 0.
        version = local_metadata.get("version")
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args)


class BatchNorm1d(_BatchNorm):
    """Batch norm over a 2D ``(N, C)`` or 3D ``(N, C, L)`` input; as ``torch.nn.BatchNorm1d``."""

    _input_dims = (2, 3)
    _layout = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch norm over a 4D ``(N, C, H, W)`` input; as ``torch.nn.BatchNorm2d``."""

    _input_dims = (4,)
    _layout = "(N, C, H, W)"


class BatchNorm3d(_BatchNorm):
    """Batch norm over a 5D ``(N, C, D, H, W)`` input; as ``torch.nn.BatchNorm3d``."""

    _input_dims = (5,)
    _layout = "(N, C, D, H, W)"



BATCH_NORMS = (nn.modules.batchnorm._BatchNorm, _BatchNorm)


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """Every batch norm layer of ``model`` (PyTorch's and this course's), in ``modules()`` order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    return [m for m in model.modules() if isinstance(m, BATCH_NORMS)]
