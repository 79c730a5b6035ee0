"""Chapter 5's experiments (what batch normalization buys, measured), as reusable pieces.

* :func:`scaled_digits`: the digits with pixels standardized by statistics of the training split.
* :func:`bn_linear`, :func:`bn_linear_grad`: ``BN(x V^T)`` and its gradient in ``V`` (weight-scale
  invariance).
* :func:`batch_noise`, :func:`predicted_batch_noise`: how much an example's normalized value moves
  with the other examples of its batch.
* :func:`lr_sweep`, :func:`scale_sweep` -> :class:`Sweep`: final accuracy over learning rates or
  initial weight scales, many seeds each, all trained at once; optionally each layer's
  update-to-weight ratio over training.
* :func:`preactivations`, :func:`preactivation_stats`, :func:`layer_grad_norms`,
  :func:`head_probe`: probes of a network on one batch; :class:`FirstSteps`: the head probe over
  the first steps of training.
* :class:`NoisyBatchNorm1d`: batch norm followed by noise that moves every step (Santurkar et al.).
* :func:`gradient_step_probe`, :class:`LandscapeTracker`: loss and gradient along the gradient
  direction (loss smoothness and gradient predictiveness, Santurkar et al.).

Probes never change the model they look at: parameters, ``.grad`` and running statistics are left
as they were.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from .. import nn as bnn
from ..functional import batch_norm
from .data import Split, digits
from .models import ACTIVATIONS, mlp, scale_weights
from .trainer import ProbeBatches, built, train

__all__ = [
    "FirstSteps", "LandscapeTracker", "NoisyBatchNorm1d", "Sweep", "batch_noise", "bn_linear",
    "bn_linear_grad", "gradient_step_probe", "head_probe", "layer_grad_norms", "lr_sweep", "noisy_mlp",
    "predicted_batch_noise", "preactivation_stats", "preactivations", "scale_sweep", "scaled_digits",
]


def scaled_digits(test_fraction: float = 0.25, seed: int = 0, device=None) -> Split:
    """:func:`bncourse.lab.data.digits` with pixels standardized by the training split's mean and std.

    One mean and one std for all pixels (per-pixel statistics would blow up the rare edge pixels
    that are almost always 0 in the training split).
    """
    split = digits(test_fraction, seed, device)
    mean, std = split.x_train.mean(), split.x_train.std()
    return Split((split.x_train - mean) / std, split.y_train, (split.x_test - mean) / std,
                 split.y_test)


# ------------------------------------------------------------------------- weight-scale invariance
def bn_linear(x: torch.Tensor, v: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``BN(x V^T)``: a linear layer without bias, batch-normalized (batch statistics, no affine)."""
    if x.dim() != 2 or v.dim() != 2 or x.shape[1] != v.shape[1]:
        raise ValueError(f"expected x of shape (N, in) and V of shape (out, in), got "
                         f"{tuple(x.shape)} and {tuple(v.shape)}")
    return batch_norm(x @ v.T, None, None, training=True, eps=eps)


def bn_linear_grad(x: torch.Tensor, v: torch.Tensor, dout: torch.Tensor,
                   eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, grad)``: ``out = BN(x V^T)`` and the gradient of ``sum(dout * out)`` in ``V``."""
    v = v.detach().clone().requires_grad_()
    out = bn_linear(x, v, eps)
    (grad,) = torch.autograd.grad((out * dout).sum(), v)
    return out.detach(), grad


# --------------------------------------------------------------------------- batch-stat noise
def batch_noise(h: torch.Tensor, index: int, batch_sizes: Sequence[int], draws: int = 1000,
                generator: torch.Generator | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Std, over ``draws`` random batches, of example ``index``'s batch-normalized value.

    ``h`` holds one value per example and unit, shape ``(N, units)``. Each batch is the example
    plus ``B - 1`` others drawn without replacement. Returns shape ``(len(batch_sizes), units)``.
    """
    if h.dim() != 2 or not 0 <= index < len(h):
        raise ValueError(f"expected h of shape (N, units) and 0 <= index < N, got shape "
                         f"{tuple(h.shape)} and index {index}")
    if any(not 2 <= b <= len(h) for b in batch_sizes):
        raise ValueError(f"batch sizes must lie in [2, {len(h)}], got {list(batch_sizes)}")
    others = torch.cat([torch.arange(index), torch.arange(index + 1, len(h))])
    result = []
    for b in batch_sizes:
        picks = torch.stack([others[torch.randperm(len(others), generator=generator)[: b - 1]]
                             for _ in range(draws)])
        batch = torch.cat([torch.full((draws, 1), index), picks], dim=1).to(h.device)
        hb = h[batch]  # (draws, B, units)
        mean, var = hb.mean(1), hb.var(1, unbiased=False)
        result.append(((hb[:, 0] - mean) / torch.sqrt(var + eps)).std(0))
    return torch.stack(result).cpu()


def predicted_batch_noise(h: torch.Tensor, index: int, batch_sizes: Sequence[int]) -> torch.Tensor:
    """First-order (delta-method) prediction of :func:`batch_noise`, shape ``(len(B), units)``.

    With ``z`` the example's standardized value, ``g`` the skewness and ``k`` the kurtosis of each
    unit, and ``N`` examples to draw batches of ``B`` from (without replacement):
    ``std = sqrt((1 + g z + (k - 1) z^2 / 4) / B * (N - B) / (N - 1))``; for Gaussian units and
    ``N >> B`` that is ``sqrt((1 + z^2/2) / B)``.
    """
    n = len(h)
    c = (h - h.mean(0)) / h.std(0, unbiased=False)
    z, skew, kurt = c[index], (c**3).mean(0), (c**4).mean(0)
    per_example = (1 + skew * z + (kurt - 1) * z**2 / 4).clamp_min(0)
    b = torch.tensor([float(v) for v in batch_sizes], dtype=h.dtype, device=h.device)[:, None]
    return torch.sqrt(per_example / b * (n - b) / (n - 1)).cpu()


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")


# --------------------------------------------------------------------------------------- sweeps
@dataclass
class Sweep:
    """Results of one training run per (value, seed): ``test_acc[i, j]`` is value i, seed j.

    ``test_acc`` and ``train_loss``: at the last step (eval mode, whole sets); ``first_loss``: the
    training loss of the first step, on its batch, before any update (the loss at initialization);
    ``diverged``: the loss became NaN or infinite. With ``record_at``, ``weight_norm[i, j, r, l]``
    and ``update_ratio[i, j, r, l]`` are, after step ``record_steps[r]``, the norm of Linear layer
    ``l``'s weight and the size of that step relative to it, ``||lr * grad|| / ||w||`` (input layer
    first; ``weight_norm[..., 0, :]`` is at initialization when ``record_at`` holds step 0).
    """

    values: list[float]
    seeds: list[int]
    test_acc: torch.Tensor
    train_loss: torch.Tensor
    diverged: torch.Tensor
    first_loss: torch.Tensor | None = None
    record_steps: list[int] = field(default_factory=list)
    weight_norm: torch.Tensor | None = None
    update_ratio: torch.Tensor | None = None

    def trains(self, accuracy: float) -> torch.Tensor:
        """Per value: did every seed reach test ``accuracy`` without diverging?"""
        return self.reached(accuracy).all(dim=1)

    def reached(self, accuracy: float) -> torch.Tensor:
        """Per value and seed: did the run reach test ``accuracy`` without diverging?"""
        return (self.test_acc >= accuracy) & ~self.diverged

    def largest_trainable(self, accuracy: float) -> float | None:
        """The largest value at which every seed reaches test ``accuracy`` (None if none does)."""
        ok = [v for v, t in zip(self.values, self.trains(accuracy).tolist(), strict=True) if t]
        return max(ok) if ok else None


class _UpdateRatios:
    """``on_step`` of :func:`bncourse.lab.trainer.train`: after each step in ``at``, each member's
    Linear weight norms and ``||lr * grad|| / ||w||``, for all members at once."""

    def __init__(self, models: list[nn.Module], lrs: Sequence[float], at: Sequence[int]):
        self.lrs, self.at = torch.tensor(lrs, dtype=torch.float64), {int(s) for s in at}
        self.steps: list[int] = []
        self.norms: list[torch.Tensor] = []
        self.ratios: list[torch.Tensor] = []
        if 0 in self.at:  # before training: the initial norms, no step yet
            norm = self._norms(models)
            self._record(0, norm, torch.zeros_like(norm))

    @staticmethod
    @torch.no_grad()
    def _norms(models: list[nn.Module], grad: bool = False) -> torch.Tensor:
        """(S, layers): the norm of every Linear layer's weight (or its .grad) in every member."""
        weights = [[m.weight for m in model.modules() if isinstance(m, nn.Linear)] for model in models]
        per_layer = []
        for k in range(len(weights[0])):
            t = torch.stack([ws[k].grad if grad else ws[k] for ws in weights])
            per_layer.append(t.flatten(1).norm(dim=1))
        return torch.stack(per_layer, 1).double().cpu()

    def _record(self, step: int, norm: torch.Tensor, grad: torch.Tensor) -> None:
        self.steps.append(step)
        self.norms.append(norm)
        self.ratios.append(self.lrs[:, None] * grad / norm)

    def __call__(self, step: int, models: list[nn.Module], batch=None) -> None:
        if step in self.at:
            self._record(step, self._norms(models), self._norms(models, grad=True))


def _sweep(values, build: Callable[[float], nn.Module], lr: Callable[[float], float],
           data: Split, steps: int, seeds: Sequence[int], batch_size: int,
           record_at: Sequence[int] | None = None) -> Sweep:
    """One member per (value, seed), all trained at once by :func:`bncourse.lab.trainer.train`."""
    values, seeds = [float(v) for v in values], list(seeds)
    if not values or not seeds:
        raise ValueError(f"expected at least one value and one seed, got {values} and {seeds}")
    if record_at is not None and any(not 0 <= int(s) <= steps for s in record_at):
        raise ValueError(f"record_at must hold steps in [0, {steps}], got {list(record_at)}")
    grid = [(v, s) for v in values for s in seeds]
    models = [built(lambda v=v: build(v).to(data.x_train.device), s) for v, s in grid]
    lrs = [lr(v) for v, _ in grid]
    probe = _UpdateRatios(models, lrs, record_at) if record_at else None
    runs = train(models, data, steps, lrs, seeds=[s for _, s in grid], batch_size=batch_size,
                 on_step=probe, progress=False)
    shape = (len(values), len(seeds))
    sweep = Sweep(values, seeds, runs.test_acc[:, -1].float().reshape(shape),
                  runs.train_loss[:, -1].float().reshape(shape), runs.diverged.reshape(shape),
                  runs.step_loss[:, 0].float().reshape(shape))
    if probe is not None and probe.steps:
        sweep.record_steps = probe.steps
        sweep.weight_norm = torch.stack(probe.norms, 1).reshape(*shape, len(probe.steps), -1)
        sweep.update_ratio = torch.stack(probe.ratios, 1).reshape(*shape, len(probe.steps), -1)
    return sweep


def lr_sweep(make_model: Callable[[], nn.Module], data: Split, lrs: Sequence[float], steps: int,
             seeds: Sequence[int] = (0, 1, 2), batch_size: int = 60,
             record_at: Sequence[int] | None = None) -> Sweep:
    """Train ``make_model()`` with plain SGD at each learning rate, once per seed, all at once.

    ``record_at``: the steps after which to record every Linear layer's weight norm and
    update-to-weight ratio (step 0: at initialization), see :class:`Sweep`.
    """
    return _sweep(lrs, lambda _: make_model(), lambda v: v, data, steps, seeds, batch_size,
                  record_at)


def scale_sweep(make_model: Callable[[], nn.Module], data: Split, scales: Sequence[float],
                lr: float, steps: int, seeds: Sequence[int] = (0, 1, 2),
                batch_size: int = 60, record_at: Sequence[int] | None = None) -> Sweep:
    """Train ``make_model()`` with every Linear weight multiplied by each scale, once per seed
    (``record_at`` as in :func:`lr_sweep`)."""
    return _sweep(scales, lambda k: scale_weights(make_model(), k), lambda _: lr, data, steps,
                  seeds, batch_size, record_at)


# --------------------------------------------------------------------------------------- probes
def _activations(model: nn.Module) -> list[nn.Module]:
    kinds = tuple(type(f()) for f in ACTIVATIONS.values())
    return [m for m in model.modules() if isinstance(m, kinds)]


def preactivations(model: nn.Module, x: torch.Tensor, training: bool = True) -> list[torch.Tensor]:
    """The input of every nonlinearity (sigmoid, ReLU, tanh, identity) of ``model`` on ``x``.

    ``training=True`` uses batch statistics as in a training step, without touching the running
    statistics (the forward runs on a copy).
    """
    _check_model(model)
    acts = _activations(model)
    if not acts:
        raise ValueError("expected a model with at least one activation module, found none")
    probe = copy.deepcopy(model).train(training)
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].detach()))
             for m in _activations(probe)]
    with torch.no_grad():
        probe(x)
    for h in hooks:
        h.remove()
    return seen


def preactivation_stats(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per nonlinearity of ``model`` on ``x`` (input side first), each averaged over its units.

    ``"spread"``: a unit's standard deviation over the examples (the part of its input that
    carries the example); ``"offset"``: the absolute value of its mean over the examples;
    ``"offset_rms"``: the root mean square of that mean over the units (comparable with the
    standard deviation of a zero-mean offset); ``"sigmoid_slope"``:
    ``sigma'(z) = sigma(z) (1 - sigma(z))``, averaged over examples too; ``"sigmoid_slope_rms"``:
    its root mean square, which sets how much a backward pass through the layer shrinks a random
    gradient; ``"sigmoid_mean_sq"``: the square of a sigmoid output's mean over the examples,
    averaged over the units (1/4 when every output averages 1/2). Training-mode forward (batch
    statistics), as :func:`preactivations`.
    """
    zs = preactivations(model, x)
    slopes = [torch.sigmoid(z) * (1 - torch.sigmoid(z)) for z in zs]
    stats = {"spread": [z.std(0, unbiased=False).mean() for z in zs],
             "offset": [z.mean(0).abs().mean() for z in zs],
             "offset_rms": [z.mean(0).pow(2).mean().sqrt() for z in zs],
             "sigmoid_slope": [s.mean() for s in slopes],
             "sigmoid_slope_rms": [s.pow(2).mean().sqrt() for s in slopes],
             "sigmoid_mean_sq": [torch.sigmoid(z).mean(0).pow(2).mean() for z in zs]}
    return {k: torch.stack(v).cpu() for k, v in stats.items()}


def layer_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The l2 norm of the cross-entropy gradient for each Linear weight, input layer first.

    One training-mode forward and backward on ``(x, y)``; ``model`` is left unchanged.
    """
    _check_model(model)
    probe = copy.deepcopy(model).train()
    weights = [m.weight for m in probe.modules() if isinstance(m, nn.Linear)]
    if not weights:
        raise ValueError("expected a model with at least one nn.Linear layer, found none")
    grads = torch.autograd.grad(nn.functional.cross_entropy(probe(x), y), weights)
    return torch.stack([g.norm() for g in grads]).detach().cpu()


def head_probe(model: nn.Module, x: torch.Tensor,
               y: torch.Tensor) -> tuple[float, float, float]:
    """How the output layer (the last ``nn.Linear``) sees a batch: ``(loss, class_gap, mean_input_sq)``.

    ``loss``: the mean cross-entropy on ``(x, y)``. ``class_gap``: the largest gap, over the
    classes, between the mean predicted probability and the class's share of the labels ``y``.
    ``mean_input_sq``: ``||a_bar||^2``, the squared norm of the output layer's input averaged over
    ``x``. When that input hardly differs between examples, an
    SGD step on the layer moves every example's logits together, ``1 + ||a_bar||^2`` times as far
    as the step on the bias alone. Training-mode forward; ``model`` is left unchanged.
    """
    _check_model(model)
    probe = copy.deepcopy(model).train()
    linears = [m for m in probe.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("expected a model with at least one nn.Linear layer, found none")
    seen: list[torch.Tensor] = []
    hook = linears[-1].register_forward_hook(lambda _m, inp, _out: seen.append(inp[0]))
    with torch.no_grad():
        logits = probe(x)
    hook.remove()
    if logits.dim() != 2 or y.shape != logits.shape[:1]:
        raise ValueError(f"expected logits of shape (N, classes) and N labels, got "
                         f"{tuple(logits.shape)} and {tuple(y.shape)}")
    share = torch.bincount(y, minlength=logits.shape[1]).to(logits.dtype) / len(y)
    gap = (logits.softmax(1).mean(0) - share).abs().max().item()
    loss = nn.functional.cross_entropy(logits, y).item()
    return loss, gap, (seen[0].mean(0) ** 2).sum().item()


class FirstSteps:
    """The first steps of one member's training, as the output layer sees them: an ``on_step`` probe
    for :func:`bncourse.lab.trainer.train` (one per member, through
    :func:`bncourse.lab.trainer.each`).

    At step 0 (when built) and after each of the first ``steps`` steps it records what
    :func:`head_probe` measures on ``(x, y)``, and the median, over the units, of each unit's median
    input to ``module`` on ``x``; both as a training step sees them (batch statistics of ``x``).
    ``values[t]`` is ``(loss, class_gap, mean_input_sq, median_input)`` at step ``t``. ``model`` is
    left as it was (parameters, buffers, modes).
    """

    def __init__(self, model: nn.Module, module: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 steps: int = 20):
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if not any(m is module for m in model.modules()):
            raise ValueError("expected module to be a submodule inside model, got one that is not")
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("expected a model with at least one nn.Linear layer, found none")
        self.x, self.y, self.steps = x, y, steps
        self._module, self._index = module, [i for i, m in enumerate(model.modules()) if m is module][0]
        self._rows: list[tuple[float, ...]] = []
        self._record(model)

    @torch.no_grad()
    def _record(self, model: nn.Module) -> None:
        modules = list(model.modules())
        head = [m for m in modules if isinstance(m, nn.Linear)][-1]
        seen: dict[str, torch.Tensor] = {}

        def keep(name):
            def hook(_module, inputs, _output) -> None:  # returns None: the output stays
                seen[name] = inputs[0]
            return hook

        hooks = [modules[self._index].register_forward_hook(keep("z")),
                 head.register_forward_hook(keep("a"))]
        modes = [(m, m.training) for m in modules]
        buffers = {k: b.clone() for k, b in model.named_buffers()}
        try:
            model.train()
            logits = model(self.x)
        finally:
            for h in hooks:
                h.remove()
            for m, training in modes:
                m.training = training
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
        share = torch.bincount(self.y, minlength=logits.shape[1]).to(logits.dtype) / len(self.y)
        gap = (logits.softmax(1).mean(0) - share).abs().max().item()
        loss = nn.functional.cross_entropy(logits, self.y).item()
        mean_sq = (seen["a"].mean(0) ** 2).sum().item()
        z = seen["z"].flatten(1) if seen["z"].dim() == 2 else seen["z"].transpose(0, 1).flatten(1).T
        median = z.median(0).values.median().item()  # each unit's median, then over the units
        self._rows.append((loss, gap, mean_sq, median))

    def __call__(self, step: int, model: nn.Module, batch=None) -> None:
        if 1 <= step <= self.steps:
            self._record(model)

    @property
    def values(self) -> torch.Tensor:
        return torch.tensor(self._rows, dtype=torch.float64)


# ------------------------------------------------------------------------------------ noisy BN
_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor | int, c: int) -> torch.Tensor | int:
    """``(x * c) mod 2**32`` for ``0 <= x, c < 2**32``, without overflowing int64."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & _MASK32


def _mix32(h: torch.Tensor | int) -> torch.Tensor | int:
    """MurmurHash3's 32-bit finalizer: a bijection that flips each output bit for about half of
    the changes of any input bit."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def unit_uniform(key: torch.Tensor, counters: int | Sequence[int]) -> torch.Tensor:
    """Draws from U(0, 1), float64, one per unit and counter: a fixed function of the unit's ``key``
    (int64, drawn at random from ``[0, 2**31)``) and a ``counter`` in ``[0, 2**32)``. Shape
    ``key.shape`` for one counter, ``(len(counters), *key.shape)`` for several.

    A counter-based random stream: draw number t needs no generator state, only the key and t
    (a hash of both). So a layer whose noise comes from per-unit keys gives every unit its own
    stream, also when S networks are trained side by side as one wide network (their keys are
    concatenated), and a network probed alone sees the same noise as in the wide one.
    """
    many = not isinstance(counters, int)
    counters = list(counters) if many else [counters]
    if any(not 0 <= c <= _MASK32 for c in counters):
        raise ValueError(f"expected counters in [0, 2**32), got {counters}")
    salt = torch.tensor([_mix32(c) for c in counters], device=key.device)
    h = _mix32((key & _MASK32) ^ salt.view(-1, *[1] * key.dim()))
    u = (h.double() + 0.5) / 2**32
    return u if many else u[0]


class NoisyBatchNorm1d(bnn.BatchNorm1d):
    """Batch norm, then noise whose distribution changes at every training step.

    In training, each step draws per unit a shift ``m ~ U(-shift, shift)`` and a scale
    ``s ~ U(1, max_scale)`` and returns ``s * BN(x) + m``: the next layer's input has a mean and a
    spread that jump at random every step, however well the batch was normalized. In eval mode it
    returns ``E[s] * BN(x)`` (the noise's average, as dropout rescales). After the "noisy
    BatchNorm" of Santurkar et al. (2018), whose exact noise (their Appendix) differs in details.

    The noise of step t is :func:`unit_uniform` of the unit's key (drawn from the global random
    stream when the layer is built, so a seed reproduces it) and t, where t is the buffer
    ``noise_step``: it moves by one at every training-mode forward with gradients on (one per SGD
    step), like the running statistics; forward passes under ``torch.no_grad()`` or in eval mode
    see the current step's noise and leave it. Both buffers are per unit or a scalar, so S
    layers stacked side by side (:mod:`bncourse.lab.stack`) each keep their own noise, and neither
    is saved in ``state_dict`` (it holds what a plain ``BatchNorm1d`` holds).
    """

    def __init__(self, num_features: int, shift: float = 1.0, max_scale: float = 2.0, **kw):
        if shift < 0 or max_scale < 1:
            raise ValueError(f"expected shift >= 0 and max_scale >= 1, got {shift} and {max_scale}")
        super().__init__(num_features, **kw)
        self.shift, self.max_scale = float(shift), float(max_scale)
        device = self.weight.device if self.weight is not None else None
        self.register_buffer("noise_key", torch.randint(2**31, (num_features,), device=device),
                             persistent=False)
        self.register_buffer("noise_step", torch.zeros((), dtype=torch.long, device=device),
                             persistent=False)

    def draw(self, index: int) -> torch.Tensor:
        """``(m, s)`` of draw number ``index``: shape (2, units), float64 on the CPU (every device
        gets the same noise, MPS too, which has no float64). The last few draws are kept while the
        keys, ``shift`` and ``max_scale`` stay as they are: do not modify them."""
        key = self.noise_key
        token = (key.data_ptr(), key._version, key.device, key.shape, self.shift, self.max_scale)
        if getattr(self, "_drawn_for", None) != token:
            self._drawn_for, self._drawn = token, {}
        if index not in self._drawn:
            if len(self._drawn) >= 4:
                del self._drawn[next(iter(self._drawn))]
            u = unit_uniform(key.cpu(), [2 * index, 2 * index + 1])
            self._drawn[index] = torch.stack([self.shift * (2 * u[0] - 1),
                                              1 + (self.max_scale - 1) * u[1]])
        return self._drawn[index]

    def noise(self, step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m, s)``, the shift and scale of every unit at ``step`` (default: the current one)."""
        m, s = self.draw(int(self.noise_step) if step is None else step)
        return m, s

    def _noisy(self, out: torch.Tensor) -> torch.Tensor:
        """``s * out + m`` with the current step's noise; a training step then moves the clock."""
        m, s = (v.to(out.device, out.dtype) for v in self.noise())
        if self.training and torch.is_grad_enabled():
            self.noise_step.add_(1)
        return out * s + m

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = super().forward(input)
        if not self.training:
            return out * (1 + self.max_scale) / 2
        return self._noisy(out)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, shift={self.shift}, max_scale={self.max_scale}"


def noisy_mlp(sizes: Sequence[int], activation: str = "sigmoid", shift: float = 1.0,
              max_scale: float = 2.0) -> nn.Sequential:
    """:func:`bncourse.lab.models.mlp` with ``norm="bn"``, every BN layer made a NoisyBatchNorm1d.

    The weights are those ``mlp(sizes, activation, norm="bn")`` draws from the same seed; the
    noise keys are drawn after them."""
    model = mlp(sizes, activation, norm="bn")
    for i, m in enumerate(model):
        if isinstance(m, bnn.BatchNorm1d):
            model[i] = NoisyBatchNorm1d(m.num_features, shift, max_scale)
    return model


# ----------------------------------------------------------------------------------- landscape
def gradient_step_probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        step_sizes: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Loss and gradient at ``theta - eta * g`` for each step size ``eta`` (g: the gradient at theta).

    Returns ``(loss, grad_change, grad_norm)``: ``loss[i] = L(theta - eta_i g)``,
    ``grad_change[i] = ||grad L(theta - eta_i g) - g||`` (the "gradient predictiveness" of
    Santurkar et al.: small means the gradient stays a good guide along the step), and ``||g||``.
    Training-mode forward (batch statistics) on the batch ``(x, y)``; ``model`` is left unchanged.
    """
    _, loss, change, norm = _step_probe(model, x, y, step_sizes)
    return loss, change, norm


def _step_probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                step_sizes: Sequence[float]) -> tuple[float, torch.Tensor, torch.Tensor, float]:
    """:func:`gradient_step_probe`, with ``L(theta)`` first."""
    _check_model(model)
    if len(step_sizes) == 0 or any(eta <= 0 for eta in step_sizes):
        raise ValueError(f"expected positive step sizes, got {list(step_sizes)}")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    theta = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    was_training = model.training
    model.train()

    def loss_and_grad(params: dict[str, torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
        params = {n: p.clone().requires_grad_() for n, p in params.items()}
        buffers = {n: b.clone() for n, b in model.named_buffers()}  # statistics, noise clocks stay
        loss = nn.functional.cross_entropy(functional_call(model, {**params, **buffers}, (x,)), y)
        return loss.item(), list(torch.autograd.grad(loss, [params[n] for n in names]))

    try:
        start, g = loss_and_grad(theta)
        losses, changes = [], []
        for eta in step_sizes:
            moved = {n: theta[n] - eta * gi for n, gi in zip(names, g, strict=True)}
            loss, g2 = loss_and_grad(moved)
            losses.append(loss)
            changes.append(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(g2, g, strict=True))))
    finally:
        model.train(was_training)
    grad_norm = torch.sqrt(sum((gi**2).sum() for gi in g)).item()
    return start, torch.tensor(losses), torch.stack(changes).cpu(), grad_norm


@dataclass
class LandscapeTracker:
    """Runs :func:`gradient_step_probe` every ``every`` steps on a fresh training batch.

    One per member, as ``on_step`` of :func:`bncourse.lab.trainer.train` through
    :func:`bncourse.lab.trainer.each`. ``loss[r, i]`` and ``grad_change[r, i]`` are record r, step
    size i; ``start_loss[r]`` is the loss at the parameters themselves (no step) and
    ``grad_norm[r]`` the gradient's norm there; ``beta`` is the "effective beta-smoothness" of each
    record, the largest ``||grad change|| / ||parameter change||`` over the step sizes.
    """

    x: torch.Tensor
    y: torch.Tensor
    step_sizes: Sequence[float]
    every: int = 10
    batch_size: int = 60
    seed: int = 0
    steps: list[int] = field(default_factory=list)
    _start: list[float] = field(default_factory=list, repr=False)
    _loss: list[torch.Tensor] = field(default_factory=list, repr=False)
    _change: list[torch.Tensor] = field(default_factory=list, repr=False)
    _norm: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self):
        self._batches = ProbeBatches(self.x, self.y, self.every, self.batch_size, self.seed)

    def __call__(self, step: int, model: nn.Module, batch=None) -> None:
        batch = self._batches.at(step)
        if batch is None:
            return
        start, loss, change, norm = _step_probe(model, *batch, self.step_sizes)
        self.steps.append(step)
        self._start.append(start)
        self._loss.append(loss)
        self._change.append(change)
        self._norm.append(norm)

    @property
    def start_loss(self) -> torch.Tensor:
        return torch.tensor(self._start)

    @property
    def loss(self) -> torch.Tensor:
        return torch.stack(self._loss)

    @property
    def grad_change(self) -> torch.Tensor:
        return torch.stack(self._change)

    @property
    def grad_norm(self) -> torch.Tensor:
        return torch.tensor(self._norm)

    @property
    def beta(self) -> torch.Tensor:
        distance = torch.tensor(list(self.step_sizes))[None, :] * self.grad_norm[:, None]
        return (self.grad_change / distance).amax(dim=1)
