"""Batch normalization as functions: the readable kernels, and ``batch_norm`` with torch's signature.

The kernels (:func:`batch_norm_forward`, :func:`batch_norm_backward`,
:func:`batch_norm_backward_fused`, ...) are those of :mod:`bncourse.kernels`, re-exported here.
:func:`batch_norm` is the differentiable entry point the layers of :mod:`bncourse.nn` call: it runs
the tuned kernels through :class:`bncourse.autograd.BatchNormFunction`, or with ``compiled=True`` the
readable kernels compiled by ``torch.compile`` (:mod:`bncourse.compiled`).
"""

from __future__ import annotations

import torch

from . import compiled as C
from .autograd import BatchNormFunction
from .kernels import *  # noqa: F403
from .kernels import (
    __all__ as _kernels,
)
from .kernels import (
    affine,
    batch_norm_eval,
    channel_view,  # noqa: F401  (part of this module's interface)
    check_channel_vector,
    check_eps,
    check_input,
    reduce_dims,  # noqa: F401
    update_running_stats,
)

__all__ = ["batch_norm", *_kernels]


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    compiled: bool = False,
) -> torch.Tensor:
    """Batch normalization with the signature and semantics of ``torch.nn.functional.batch_norm``.

    Training mode normalizes with the batch statistics and, when running buffers are given,
    updates them in place: ``new = (1 - momentum) * old + momentum * batch`` (the variance
    unbiased). Eval mode normalizes with the running statistics. Differentiable through this
    package's own backward (:class:`bncourse.autograd.BatchNormFunction`).

    ``compiled=True`` runs the kernels of this module compiled by ``torch.compile``
    (:mod:`bncourse.compiled`): the same values, faster, after a compilation of seconds to a minute
    the first time; where no compiler is available it warns once and runs the eager kernels.
    """
    check_eps(eps, training)
    if not training and (running_mean is None or running_var is None):
        raise ValueError(
            "expected running_mean and running_var in eval mode (training=False), got None; "
            "pass training=True to normalize with the batch statistics"
        )
    if isinstance(input, torch.Tensor) and input.numel() == 0:  # as PyTorch: empty out, no update
        return input.clone() if input.dim() < 2 else affine(input, weight, bias)
    check_input(input, training)
    for name, v in (("running_mean", running_mean), ("running_var", running_var)):
        check_channel_vector(v, name, input)
    check_channel_vector(weight, "weight", input)
    check_channel_vector(bias, "bias", input)
    if training:
        train = C.batch_norm_train if compiled else BatchNormFunction.apply
        out, mean, var = train(input, weight, bias, eps)
        update_running_stats(running_mean, running_var, mean, var, momentum, input)
        return out
    evaluate = C.batch_norm_eval if compiled else batch_norm_eval
    return evaluate(input, running_mean, running_var, weight, bias, eps)
