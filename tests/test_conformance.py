"""Conformance with PyTorch's own test inputs for batch norm, which ship in the wheel.

``module_db`` holds the inputs and error inputs PyTorch tests ``BatchNorm1d/2d/3d`` with; ``op_db`` the
samples of ``nn.functional.batch_norm``. Each is run against ``bn.nn`` and ``bn.functional`` in train
and eval mode, float32 and float64, with fresh and loaded state (parameters and running statistics moved
by a few training steps of PyTorch's layer), comparing outputs, input and parameter gradients and
buffers. op_db's other batch-norm entries (``native_batch_norm``, ``_native_batch_norm_legit``,
``_batch_norm_with_update``) are ATen internals with other signatures, not this package's API; its
``without_cudnn`` variant runs the same samples on CUDA only, where the ``device`` fixture runs them too.
"""

import re

import pytest
import torch
from torch.testing._internal.common_methods_invocations import op_db
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db

import bncourse as bn
from conftest import tolerances

OURS = {torch.nn.BatchNorm1d: bn.nn.BatchNorm1d, torch.nn.BatchNorm2d: bn.nn.BatchNorm2d,
        torch.nn.BatchNorm3d: bn.nn.BatchNorm3d}
MODULES = [info for info in module_db if info.module_cls in OURS]
OP = next(op for op in op_db if op.name == "nn.functional.batch_norm" and not op.variant_test_name)
DTYPES = [torch.float32, torch.float64]
MODES = {"train": True, "eval": False}


def module_cases(error_inputs: bool):
    func = "module_error_inputs_func" if error_inputs else "module_inputs_func"
    for info in MODULES:
        inputs = getattr(info, func)(info, device="cpu", dtype=torch.float64, requires_grad=False,
                                     training=True)
        for i, case in enumerate(inputs):
            desc = (case.module_error_input if error_inputs else case).desc or "default"
            yield pytest.param(info, i, id=f"{info.module_cls.__name__}-{i}-{desc}")


def cloned(args):
    return [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
            for a in args]


def float_inputs(args):
    return [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]


def run_and_backward(fn, args, kwargs, dout_seed):
    """``fn(*args, **kwargs)``, then its backward with a seeded random output gradient."""
    out = fn(*args, **kwargs)
    if out.requires_grad:
        g = torch.Generator().manual_seed(dout_seed)
        out.backward(torch.randn(out.shape, generator=g, dtype=out.dtype).to(out.device))
    return out.detach()


def assert_all_close(actual, expected, tol, what):
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        if e is None:
            assert a is None, f"{what} {i}: expected None, got a tensor"
        else:
            torch.testing.assert_close(a, e, **tol, msg=lambda m, i=i: f"{what} {i}: {m}")


def make_layers(info, case, dtype, device, state):
    args, kwargs = case.constructor_input.args, case.constructor_input.kwargs
    ref = info.module_cls(*args, **kwargs, device=device, dtype=dtype)
    ours = OURS[info.module_cls](*args, **kwargs, device=device, dtype=dtype)
    if state == "loaded":  # parameters and running statistics away from their initial values
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(torch.rand(p.shape, generator=g, dtype=dtype) + 0.5)
            shape = (3, ref.num_features, *case.forward_input.args[0].shape[2:])
            for _ in range(2):
                ref(torch.randn(shape, generator=g, dtype=dtype).to(device) * 2 + 1)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@pytest.mark.parametrize("state", ["fresh", "loaded"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("info", "index"), list(module_cases(error_inputs=False)))
def test_module_inputs(info, index, dtype, mode, state, device):
    torch.manual_seed(index)
    case = info.module_inputs_func(info, device=device, dtype=dtype, requires_grad=True,
                                   training=MODES[mode])[index]
    layers = make_layers(info, case, dtype, device, state)
    results = []
    for layer in layers:
        layer.train(MODES[mode])
        args = cloned(case.forward_input.args)
        out = run_and_backward(layer, args, case.forward_input.kwargs, dout_seed=index)
        grads = [a.grad for a in float_inputs(args)] + [p.grad for p in layer.parameters()]
        results.append((out, grads, list(layer.state_dict().values())))
    tol = tolerances(dtype)
    (out, grads, state_), (ref_out, ref_grads, ref_state) = results
    torch.testing.assert_close(out, ref_out, **tol)
    assert_all_close(grads, ref_grads, tol, "gradient")
    assert_all_close(state_, ref_state, tol, "buffer or parameter")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("info", "index"), list(module_cases(error_inputs=True)))
def test_module_error_inputs(info, index, dtype, mode, device):
    """Where PyTorch raises, ours raises the same error type; else both agree.

    The regex is PyTorch's for a freshly built layer (training mode): eval mode, which accepts eps = 0,
    says "non-negative" instead, in PyTorch's message and ours.
    """
    error = info.module_error_inputs_func(info, device=device, dtype=dtype, requires_grad=False,
                                          training=MODES[mode])[index]
    case = error.module_error_input
    c = case.constructor_input
    if error.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
        with pytest.raises(error.error_type, match=error.error_regex):
            OURS[info.module_cls](*c.args, **c.kwargs)
        return
    layers = [cls(*c.args, **c.kwargs, device=device, dtype=dtype).train(MODES[mode])
              for cls in (OURS[info.module_cls], info.module_cls)]
    x = case.forward_input.args[0]
    try:
        expected = layers[1](x)
    except error.error_type as e:
        regex = error.error_regex if re.search(error.error_regex, str(e)) else "non-negative"
        with pytest.raises(error.error_type, match=regex):
            layers[0](x)
    else:
        torch.testing.assert_close(layers[0](x), expected, **tolerances(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("index", range(len(list(OP.sample_inputs("cpu", torch.float64)))))
def test_functional_samples(index, dtype, device):
    torch.manual_seed(index)
    sample = list(OP.sample_inputs(device, dtype, requires_grad=True))[index]
    results = []
    for fn in (bn.functional.batch_norm, torch.nn.functional.batch_norm):
        args = cloned([sample.input, *sample.args])
        out = run_and_backward(fn, args, sample.kwargs, dout_seed=index)
        # running_mean and running_var are updated in place in training mode
        results.append((out, [a.grad for a in float_inputs(args)], [a for a in args[1:3]]))
    tol = tolerances(dtype)
    (out, grads, stats), (ref_out, ref_grads, ref_stats) = results
    torch.testing.assert_close(out, ref_out, **tol)
    assert_all_close(grads, ref_grads, tol, "gradient")
    assert_all_close(stats, ref_stats, tol, "running statistic")
