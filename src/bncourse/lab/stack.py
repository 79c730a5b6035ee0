"""S networks of one architecture as one wide network, so that S seeds train in one pass.

The wide network sees the S members' inputs side by side along the channel dim: an activation of
shape ``(B, S * C, ...)`` holds member ``i``'s ``(B, C, ...)`` in channels ``i*C`` to ``(i+1)*C``.
In that layout every per-channel layer (batch norm in all its variants, activations, pooling,
dropout) is itself with S times the channels: batch norm then takes each member's statistics over
its own batch, as a one-member run does. A Linear layer becomes a batched matrix product, a
convolution a grouped one (``groups=S``), a group norm one with S times the groups.

Each member stays a plain ``nn.Module`` whose parameters and buffers are views into the wide
network's: a step of the wide network is a step of every member, and a member can be read, probed
or evaluated as it is. :meth:`Stack.release` gives the members their own memory again.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Stack"]


class WideLinear(nn.Module):
    """S ``nn.Linear`` layers side by side: ``weight`` (S, out, in), ``bias`` (S, out) or None."""

    def __init__(self, members: Sequence[nn.Linear]):
        super().__init__()
        first = members[0]
        self.in_features, self.out_features, self.size = first.in_features, first.out_features, len(members)
        self.weight = _stacked(members, "weight", torch.stack)
        self.bias = _stacked(members, "bias", torch.stack) if first.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.size * self.in_features:
            raise ValueError(f"expected a wide input (B, {self.size} * {self.in_features}), "
                             f"got shape {tuple(x.shape)}")
        h = x.view(x.shape[0], self.size, self.in_features).transpose(0, 1)  # (S, B, in)
        if self.bias is None:
            out = torch.bmm(h, self.weight.transpose(1, 2))
        else:
            out = torch.baddbmm(self.bias.unsqueeze(1), h, self.weight.transpose(1, 2))
        return out.transpose(0, 1).reshape(x.shape[0], -1)

    def extra_repr(self) -> str:
        return f"{self.size} x ({self.in_features} -> {self.out_features}), bias={self.bias is not None}"


class WideLayerNorm(nn.Module):
    """S ``nn.LayerNorm(C)`` layers side by side, on a wide input (B, S * C)."""

    def __init__(self, members: Sequence[nn.LayerNorm]):
        super().__init__()
        first = members[0]
        if len(first.normalized_shape) != 1:
            raise ValueError(f"expected LayerNorm over one dim, got {first.normalized_shape}")
        self.size, self.width, self.eps = len(members), first.normalized_shape[0], first.eps
        affine = first.weight is not None
        self.weight = _stacked(members, "weight", torch.stack) if affine else None
        self.bias = _stacked(members, "bias", torch.stack) if getattr(first, "bias", None) is not None \
            else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(x.view(x.shape[0], self.size, self.width), (self.width,), eps=self.eps)
        if self.weight is not None:
            h = h * self.weight
        if self.bias is not None:
            h = h + self.bias
        return h.reshape(x.shape)


def _stacked(members, name: str, join) -> nn.Parameter:
    """The members' parameter ``name`` joined into one new parameter."""
    first = getattr(members[0], name)
    return nn.Parameter(join([getattr(m, name).detach() for m in members]),
                        requires_grad=first.requires_grad)


def _direct_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**{k: v for k, v in module._parameters.items() if v is not None},
            **{k: v for k, v in module._buffers.items() if v is not None}}


def _wide_per_channel(members: Sequence[nn.Module]) -> nn.Module:
    """A per-channel layer (every tensor of shape (C,), or a scalar) with S * C channels."""
    wide = copy.deepcopy(members[0])
    size = len(members)
    for name, value in _direct_tensors(members[0]).items():
        if value.dim() == 0:
            continue  # a scalar (num_batches_tracked) stays one: the members step together
        joined = torch.cat([getattr(m, name).detach() for m in members])
        if name in wide._parameters:
            wide._parameters[name] = nn.Parameter(joined, requires_grad=value.requires_grad)
        else:
            wide._buffers[name] = joined
    for attr in ("num_features", "num_channels"):
        if hasattr(wide, attr):
            setattr(wide, attr, getattr(wide, attr) * size)
    return wide


def _is_per_channel(module: nn.Module) -> bool:
    shapes = {tuple(t.shape) for t in _direct_tensors(module).values() if t.dim() > 0}
    return len(shapes) == 1 and len(next(iter(shapes))) == 1


def _widen(members: Sequence[nn.Module]) -> nn.Module:
    """The wide counterpart of ``members`` (modules of one type and shape), recursively."""
    first, size = members[0], len(members)
    kinds = {type(m) for m in members}
    if len(kinds) != 1:
        raise ValueError(f"expected members of one architecture, got {sorted(k.__name__ for k in kinds)}")
    settings = {m.extra_repr() for m in members}
    if len(settings) != 1:  # momentum, eps, shapes, ...: the wide layer has only one of each
        raise ValueError(f"cannot stack {type(first).__name__} layers with different settings: "
                         f"{sorted(settings)}; train such members in separate calls")
    if isinstance(first, nn.Linear):
        return WideLinear(members)
    if isinstance(first, nn.modules.conv._ConvNd):
        if first.padding_mode != "zeros" or first.transposed:
            raise ValueError(f"cannot stack {first}: only zero-padded, non-transposed convolutions")
        wide = copy.deepcopy(first)
        wide.in_channels, wide.out_channels = first.in_channels * size, first.out_channels * size
        wide.groups = first.groups * size
        wide.weight = _stacked(members, "weight", torch.cat)
        if first.bias is not None:
            wide.bias = _stacked(members, "bias", torch.cat)
        return wide
    if isinstance(first, nn.LayerNorm):
        return WideLayerNorm(members)
    if isinstance(first, nn.GroupNorm):
        wide = _wide_per_channel(members)
        wide.num_groups = first.num_groups * size
        return wide
    if isinstance(first, nn.Unflatten):
        if first.dim != 1:
            raise ValueError(f"cannot stack {first}: only Unflatten(1, ...)")
        return nn.Unflatten(1, (first.unflattened_size[0] * size, *first.unflattened_size[1:]))
    if isinstance(first, nn.Flatten) and first.start_dim != 1:
        raise ValueError(f"cannot stack {first}: only Flatten(start_dim=1)")
    if _direct_tensors(first):
        if not _is_per_channel(first):
            shapes = {k: tuple(v.shape) for k, v in _direct_tensors(first).items()}
            raise ValueError(f"cannot stack {type(first).__name__}: expected a Linear, a convolution, "
                             f"a norm or a per-channel layer, got tensors {shapes}")
        return _wide_per_channel(members)
    wide = copy.copy(first)  # a container or a parameter-free layer: its own forward, wide children
    wide._modules = {name: _widen([m._modules[name] for m in members])
                     for name, child in first._modules.items() if child is not None}
    wide._parameters, wide._buffers = {}, {}
    return wide


def _pairs(member: nn.Module, wide: nn.Module):
    """(member module, wide module) for every module of the member's tree."""
    yield member, wide
    for name, child in member._modules.items():
        if child is not None:
            yield from _pairs(child, wide._modules[name])


class Stack:
    """S members of one architecture and their wide network.

    ``Stack(models)`` takes the members as they are (their initial weights, statistics and modes)
    and makes their tensors views into the wide network's. :meth:`wide_input` and
    :meth:`member_output` translate between per-member tensors ``(S, B, ...)`` and the wide layout.
    """

    def __init__(self, models: Sequence[nn.Module]):
        self.members = list(models)
        if not self.members:
            raise ValueError("expected at least one model")
        if any(not isinstance(m, nn.Module) for m in self.members):
            raise TypeError("expected torch.nn.Module members")
        self.size = len(self.members)
        with torch.no_grad():
            self.wide = _widen(self.members)
        self.wide.train(self.members[0].training)
        for a, b in zip(self.members[0].modules(), self.wide.modules(), strict=False):
            b.training = a.training
        self._attach()

    def _attach(self) -> None:
        """Make every member tensor a view into the wide network's (scalars: the same tensor)."""
        for i, member in enumerate(self.members):
            for mod, wide in _pairs(member, self.wide):
                for name, t in _direct_tensors(mod).items():
                    w = getattr(wide, name)
                    if t.dim() == 0:
                        mod._buffers[name] = w
                    else:
                        t.data = w.data.view(self.size, *t.shape)[i]

    def release(self) -> list[nn.Module]:
        """Give every member its own copy of its tensors (the wide network is then unused)."""
        for member in self.members:
            for mod in member.modules():
                for name, t in _direct_tensors(mod).items():
                    if name in mod._buffers and t.dim() == 0:
                        mod._buffers[name] = t.clone()
                    else:
                        t.data = t.data.clone()
        return self.members

    def wide_input(self, x: torch.Tensor) -> torch.Tensor:
        """Per-member inputs ``(S, B, C, ...)`` in the wide layout ``(B, S * C, ...)``."""
        if x.dim() < 3 or x.shape[0] != self.size:
            raise ValueError(f"expected inputs of shape ({self.size}, B, C, ...), got {tuple(x.shape)}")
        return x.transpose(0, 1).reshape(x.shape[1], self.size * x.shape[2], *x.shape[3:])

    def member_output(self, out: torch.Tensor) -> torch.Tensor:
        """A wide output ``(B, S * K, ...)`` as ``(S, B, K, ...)``."""
        b = out.shape[0]
        return out.view(b, self.size, out.shape[1] // self.size, *out.shape[2:]).transpose(0, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Every member on its own input: ``(S, B, ...)`` in, ``(S, B, K, ...)`` out."""
        return self.member_output(self.wide(self.wide_input(x)))

    @torch.no_grad()
    def check(self, x: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> None:
        """Raise if the wide network in eval mode does not compute what each member computes on ``x``
        of shape ``(S, B, ...)``: a layer whose forward mixes channels would show here."""
        modes = [m.training for m in self.wide.modules()]
        self.wide.eval()
        try:
            wide = self(x)
            for i, member in enumerate(self.members):
                member_modes = [m.training for m in member.modules()]
                member.eval()
                own = member(x[i])
                for m, mode in zip(member.modules(), member_modes, strict=True):
                    m.training = mode
                if not torch.allclose(wide[i], own, rtol=rtol, atol=atol * (1 + own.abs().max().item())):
                    raise ValueError(
                        f"cannot train these models stacked: member {i} computes another output alone "
                        f"(largest difference {(wide[i] - own).abs().max().item():.3g}); a layer of "
                        f"{type(member).__name__} mixes channels or reshapes its input")
        finally:
            for m, mode in zip(self.wide.modules(), modes, strict=True):
                m.training = mode
