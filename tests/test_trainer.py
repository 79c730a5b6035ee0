"""The one trainer: S members trained together equal S single runs, and a single run equals the plain
PyTorch loop it stands for (torch.optim.SGD, one model, the same batches), for every option."""

import copy

import pytest
import torch
from torch import nn

import bncourse as bn
from bncourse.lab import convnets, residual
from bncourse.lab.data import Split
from bncourse.lab.stack import Stack
from bncourse.lab.trainer import train

STEPS = 25


def _data(n=96, features=64, classes=10, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g) + shift
    y = torch.randint(0, classes, (n,), generator=g)
    return Split(x[: n // 2 + 16], y[: n // 2 + 16], x[n // 2 + 16:], y[n // 2 + 16:])


def _reference(model, data, steps, lr, seed, batch_size, weight_decay=0.0, decay=None,
               bn_eval=False):
    """The plain loop one member stands for: torch.optim.SGD, the member's own batch order."""
    decayed = {id(p) for p in (decay(model) if decay else model.parameters())}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) in decayed], "weight_decay": weight_decay},
              {"params": [p for p in trainable if id(p) not in decayed], "weight_decay": 0.0}]
    opt = torch.optim.SGD([g for g in groups if g["params"]], lr=lr)
    gen = bn.lab.device.generator(seed)
    model.train()
    for layer in bn.nn.bn_layers(model) if bn_eval else []:
        layer.eval()
    x, y = data.x_train, data.y_train
    done, losses = 0, []
    while done < steps:
        order = torch.randperm(len(x), generator=gen)
        for i in range(len(x) // batch_size):
            idx = order[i * batch_size:(i + 1) * batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            done += 1
            if done == steps:
                break
    return model, losses


def _build(kind):
    return {
        "bn": lambda: bn.models.mlp([64, 32, 32, 10], "sigmoid", norm="bn"),
        "torch_bn": lambda: bn.models.mlp([64, 32, 32, 10], "relu", norm="torch_bn"),
        "plain": lambda: bn.models.mlp([64, 32, 10], "tanh"),
        "layer": lambda: bn.models.mlp([64, 32, 10], "relu", norm="layer"),
        "group": lambda: bn.models.mlp([64, 32, 10], "relu", norm="group"),
        "conv": lambda: convnets.conv_net((4, 8, 8)),
        "residual": lambda: residual.residual_mlp(2, width=16, zero_init=True),
    }[kind]


def _assert_same_model(a: nn.Module, b: nn.Module, rtol=1e-4, atol=1e-5):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k].double(), sb[k].double(), rtol=rtol, atol=atol), (
            k, (sa[k].double() - sb[k].double()).abs().max().item())


def _single(build, seed):
    bn.seed_everything(seed)
    return build()


@pytest.mark.parametrize("kind", ["bn", "torch_bn", "plain", "layer", "group", "conv", "residual"])
def test_members_together_equal_single_runs_and_the_plain_loop(kind):
    data, seeds = _data(), [3, 5, 8]
    build = _build(kind)
    together = train(build, data, STEPS, 0.2, seeds=seeds, batch_size=16, progress=False)
    for i, seed in enumerate(seeds):
        alone = train(build, data, STEPS, 0.2, seeds=[seed], batch_size=16, progress=False)
        _assert_same_model(together.models[i], alone.models[0])
        ref, losses = _reference(_single(build, seed), data, STEPS, 0.2, seed, 16)
        _assert_same_model(alone.models[0], ref)
        assert torch.allclose(together.step_loss[i], torch.tensor(losses, dtype=torch.float64),
                              rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("option", [
    {"weight_decay": 0.05},
    {"weight_decay": 0.05, "decay": bn.weight_decay.scale_invariant_weights},
    {"bn_eval": True},
])
def test_every_option_matches_single_runs_and_the_plain_loop(option):
    data, seeds = _data(), [0, 1, 2, 3]
    build = _build("bn")
    together = train(build, data, STEPS, 0.3, seeds=seeds, batch_size=16, progress=False, **option)
    for i, seed in enumerate(seeds):
        ref, _ = _reference(_single(build, seed), data, STEPS, 0.3, seed, 16, **option)
        _assert_same_model(together.models[i], ref)


def test_per_member_learning_rates_and_data():
    seeds, lrs = [0, 0, 1], [0.05, 0.5, 0.2]
    splits = [_data(seed=s, shift=s) for s in range(3)]
    build = _build("bn")
    together = train(build, splits, STEPS, lrs, seeds=seeds, batch_size=16, progress=False)
    for i, (seed, lr) in enumerate(zip(seeds, lrs, strict=True)):
        ref, _ = _reference(_single(build, seed), splits[i], STEPS, lr, seed, 16)
        _assert_same_model(together.models[i], ref)


def test_members_keep_their_own_running_statistics_and_counters():
    seeds = [0, 1]
    runs = train(_build("bn"), _data(), 7, 0.1, seeds=seeds, batch_size=16, progress=False)
    a, b = (bn.nn.bn_layers(m)[0] for m in runs.models)
    assert not torch.equal(a.running_mean, b.running_mean)
    assert a.num_batches_tracked.item() == b.num_batches_tracked.item() == 7
    a.num_batches_tracked.add_(1)  # after training, each member owns its tensors
    a.running_mean.zero_()
    assert b.num_batches_tracked.item() == 7 and b.running_mean.abs().sum() > 0


def test_on_step_sees_every_member_with_the_gradient_of_the_step():
    data, seeds = _data(), [0, 1, 2]
    build = _build("bn")
    seen = []

    def probe(step, models, batch):
        assert batch[0].shape == (3, 16, 64) and batch[1].shape == (3, 16)
        assert len(models) == 3
        seen.append((step, [m[0].weight.grad.norm().item() for m in models],
                     [m[0].weight.detach().clone() for m in models]))

    train(build, data, 4, 0.2, seeds=seeds, batch_size=16, progress=False, on_step=probe)
    assert [s for s, _, _ in seen] == [1, 2, 3, 4]
    for i, seed in enumerate(seeds):  # the first step's gradient and weights, as a single run's
        model = _single(build, seed)
        gen = bn.lab.device.generator(seed)
        idx = torch.randperm(len(data.x_train), generator=gen)[:16]
        loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        loss.backward()
        assert seen[0][1][i] == pytest.approx(model[0].weight.grad.norm().item(), rel=1e-4)
        with torch.no_grad():
            model[0].weight.sub_(0.2 * model[0].weight.grad)
        assert torch.allclose(seen[0][2][i], model[0].weight, atol=1e-6)


def test_evaluations_are_those_of_each_member_alone():
    data = _data()
    runs = train(_build("bn"), data, 12, 0.2, seeds=[0, 1], batch_size=16, eval_every=5,
                 progress=False)
    assert runs.eval_step == [0, 5, 10, 12]
    assert runs.test_acc.shape == (2, 4) and runs.train_loss.shape == (2, 4)
    for i, model in enumerate(runs.models):
        loss, acc = bn.lab.trainer.evaluate(model, data.x_test, data.y_test)
        assert runs.test_acc[i, -1].item() == pytest.approx(acc)
        assert runs.test_loss[i, -1].item() == pytest.approx(loss, rel=1e-5)
        loss, acc = bn.lab.trainer.evaluate(model, data.x_train, data.y_train)
        assert runs.train_loss[i, -1].item() == pytest.approx(loss, rel=1e-5)
    quick = train(_build("bn"), data, 12, 0.2, seeds=[0, 1], batch_size=16, eval_every=5,
                  progress=False, eval_train=False)
    assert torch.isnan(quick.train_acc).all() and torch.equal(quick.test_acc, runs.test_acc)


def test_a_diverging_member_leaves_the_others_alone():
    data, build = _data(), lambda: bn.models.mlp([64, 32, 10], "relu")
    runs = train(build, data, 10, [0.1, 1e12], seeds=[0, 0], batch_size=16, progress=False)
    alone = train(build, data, 10, 0.1, seeds=[0], batch_size=16, progress=False)
    assert runs.diverged.tolist() == [False, True]
    _assert_same_model(runs.models[0], alone.models[0])
    assert runs.steps_to(0.0)[0] == 0


def test_frozen_parameters_stay_and_trained_members_are_the_models_passed():
    models = [_single(_build("bn"), s) for s in (0, 1)]
    for m in models:
        m[0].weight.requires_grad_(False)
    before = [m[0].weight.clone() for m in models]
    runs = train(models, _data(), 5, 0.5, seeds=[0, 1], batch_size=16, progress=False)
    assert runs.models[0] is models[0]
    for m, w in zip(models, before, strict=True):
        assert torch.equal(m[0].weight, w)
        assert not torch.equal(m[1].weight, torch.ones_like(m[1].weight))


def test_a_layer_that_mixes_channels_is_refused():
    class Flip(nn.Module):
        def forward(self, x):
            return x.flip(1)

    with pytest.raises(ValueError, match="cannot train these models stacked"):
        train(lambda: nn.Sequential(nn.Linear(64, 8), Flip(), nn.Linear(8, 10)), _data(), 2, 0.1,
              seeds=[0, 1], batch_size=16, progress=False)


@pytest.mark.parametrize("bad, match", [
    ({"steps": 0}, "steps must be a positive int"),
    ({"lr": -1.0}, "learning rates > 0"),
    ({"lr": [0.1, 0.2]}, "one learning rate or one per seed"),
    ({"batch_size": 1}, "batch_size must be an int in"),
    ({"eval_every": 0}, "eval_every must be a positive int"),
    ({"seeds": []}, "at least one seed"),
])
def test_bad_arguments_say_what_was_expected(bad, match):
    kwargs = {"steps": 3, "lr": 0.1, "seeds": [0, 1, 2], "batch_size": 8, **bad}
    with pytest.raises(ValueError, match=match):
        train(_build("plain"), _data(), kwargs.pop("steps"), kwargs.pop("lr"), progress=False,
              **kwargs)


def test_one_model_instead_of_a_builder_is_refused_with_the_fix():
    with pytest.raises(TypeError, match="lambda: model"):
        train(_build("plain")(), _data(), 2, 0.1, progress=False)


def test_stack_members_are_views_until_released():
    models = [_single(_build("bn"), s) for s in (0, 1)]
    stack = Stack(models)
    with torch.no_grad():
        stack.wide[0].weight.add_(1.0)
    assert torch.equal(models[1][0].weight, stack.wide[0].weight[1])
    released = stack.release()
    with torch.no_grad():
        stack.wide[0].weight.add_(1.0)
    assert not torch.equal(released[1][0].weight, stack.wide[0].weight[1])
    assert copy.deepcopy(released[0]) is not None


def test_members_whose_layers_differ_in_settings_are_refused():
    def build(momentum):
        return lambda: nn.Sequential(nn.Linear(64, 8), bn.nn.BatchNorm1d(8, momentum=momentum),
                                     nn.Linear(8, 10))
    models = [bn.trainer.built(build(m), 0) for m in (0.1, 0.01)]
    with pytest.raises(ValueError, match="different settings"):
        train(models, _data(), 2, 0.1, seeds=[0, 1], batch_size=16, progress=False)
