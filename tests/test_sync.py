"""bncourse.nn.SyncBatchNorm: K gloo processes, each with a shard, against one process on the whole batch.

Processes are started once per K for the whole module (bncourse.lab.distributed.Cluster: 127.0.0.1
only, every process ended at the end, on a failure or past a time limit) and run many cases each.
"""

import copy

import pytest
import torch
from torch import nn

import bncourse as bn
from bncourse.lab.distributed import (
    Cluster,
    WorkerError,
    data_parallel_train,
    header_bytes,
    make_batches,
    ring_values,
    sync_batch_norm_steps,
    train_one_process,
    written,
)
from bncourse.smallbatch import GhostBatchNorm
from bncourse.sync import (
    SyncBatchNorm,
    SyncBatchNormFunction,
    local_moments,
    merge_moments,
    pack_moments,
    unpack_moments,
)
from conftest import tolerances

TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
SHAPES = {2: (12, 3), 3: (12, 4, 5), 4: (12, 3, 4, 5), 5: (12, 2, 3, 2, 3)}
SIZES = {2: [None, [9, 3], [1, 11]], 4: [None, [5, 0, 4, 3], [2, 1, 1, 8]]}  # uneven, an empty shard
VARIANTS = [{}, {"momentum": None}, {"momentum": 0.3, "eps": 1e-3}, {"affine": False}, {"bias": False},
            {"track_running_stats": False}]


@pytest.fixture(scope="module")
def cluster():
    started: dict[int, Cluster] = {}

    def get(k: int) -> Cluster:
        if k not in started or started[k].closed:  # a failed call ends its cluster: start anew
            started[k] = Cluster(k, timeout=60)
        return started[k]

    yield get
    for c in started.values():
        c.close()
    assert all(not p.is_alive() for c in started.values() for p in c._procs)


def batches(shape, dtype, steps=2, seed=0, offset=2.0):
    g = torch.Generator().manual_seed(seed)
    xs = [(torch.randn(shape, generator=g, dtype=torch.float64) * 3 + offset + s).to(dtype)
          for s in range(steps)]
    douts = [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(steps)]
    return xs, douts


def reference(xs, douts, kw, dtype):
    """torch.nn.BatchNorm*d on the whole batch, with the same parameters as the layer under test."""
    layer = TORCH_BN[xs[0].dim()](xs[0].shape[1], dtype=dtype, **kw)
    outs, dxs = [], []
    for x, dout in zip(xs, douts, strict=True):
        xr = x.clone().requires_grad_()
        out = layer(xr)
        out.backward(dout)
        outs.append(out.detach())
        dxs.append(xr.grad)
    return outs, dxs, {n: p.grad for n, p in layer.named_parameters()}, layer.state_dict()


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("dims", [2, 3, 4, 5])
def test_k_processes_match_one_process_on_the_whole_batch(cluster, k, dims):
    cases, refs = [], []
    for dtype in (torch.float64, torch.float32):
        for sizes in SIZES[k]:
            # every variant once, with uneven shards (an empty one for K = 4); the default everywhere
            for kw in VARIANTS if dtype == torch.float64 and sizes == SIZES[k][1] else VARIANTS[:1]:
                xs, douts = batches(SHAPES[dims], dtype)
                cases.append({"xs": xs, "douts": douts, "sizes": sizes, "layer_kwargs": kw})
                refs.append((reference(xs, douts, kw, dtype), dtype))
    for case, ranks, ((outs, dxs, grads, state), dtype) in zip(
        cases, cluster(k).map(sync_batch_norm_steps, cases), refs, strict=True
    ):
        tol = tolerances(dtype)
        what = f"K={k}, sizes={case['sizes']}, {case['layer_kwargs']}, {dtype}"
        for step in range(len(outs)):
            bn.testing.assert_close(torch.cat([r["out"][step] for r in ranks]), outs[step], **tol,
                                    what=f"outputs at step {step} ({what})")
            bn.testing.assert_close(torch.cat([r["dx"][step] for r in ranks]), dxs[step], **tol,
                                    what=f"input gradients at step {step} ({what})")
        for name, grad in grads.items():  # each process holds its shard's share: they add up
            bn.testing.assert_close(sum(r["grads"][name] for r in ranks), grad, **tol,
                                    what=f"{name}.grad ({what})")
        for r in ranks:
            assert list(r["state"]) == list(state)
            for key, value in state.items():
                bn.testing.assert_close(r["state"][key], value, **tol, what=f"{key} ({what})")
            # each training step: one all-gather forward, one all-reduce backward; eval: nothing
            assert all(sorted(c) == ["all_gather_single", "all_reduce", "bytes"] for c in r["train_calls"])
            assert all(c["all_gather_single"] == 1 and c["all_reduce"] == 1 for c in r["train_calls"])
            assert r["eval_calls"] == {}
            # no tensor value comes back to Python in forward or backward (no .item(), bool(), ...)
            assert r["host_syncs"] == [{}] * len(xs), r["host_syncs"]


@pytest.mark.parametrize("groups", [[[0, 2], [1, 3]], [[0], [1, 2, 3]], [[0, 1, 2, 3]]],
                         ids=["two-pairs", "one-alone", "all"])
def test_a_process_group_synchronizes_only_its_members(cluster, groups):
    sizes = [3, 5, 4, 0]
    xs, douts = batches((12, 3, 4), torch.float64)
    (ranks,) = cluster(4).map(sync_batch_norm_steps, [{"xs": xs, "douts": douts, "sizes": sizes,
                                                        "groups": groups, "layer_kwargs": {"momentum": 0.3}}])
    tol = tolerances(torch.float64)
    for group in groups:
        # the group's shards, concatenated: one process on the group's part of the batch
        parts = [[t.split(sizes)[r] for r in group] for t in (xs[0], xs[1], douts[0], douts[1])]
        if sum(sizes[r] for r in group) < 2:
            continue
        x_group, dout_group = [torch.cat(p) for p in parts[:2]], [torch.cat(p) for p in parts[2:]]
        outs, dxs, grads, state = reference(x_group, dout_group, {"momentum": 0.3}, torch.float64)
        for step in range(2):
            bn.testing.assert_close(torch.cat([ranks[r]["out"][step] for r in group]), outs[step], **tol,
                                    what=f"outputs of group {group}")
            bn.testing.assert_close(torch.cat([ranks[r]["dx"][step] for r in group]), dxs[step], **tol,
                                    what=f"input gradients of group {group}")
        for r in group:
            for key in ("running_mean", "running_var"):
                bn.testing.assert_close(ranks[r]["state"][key], state[key], **tol, what=f"{key}, rank {r}")
            expected = {} if len(group) == 1 else {"all_gather_single": 1, "all_reduce": 1}
            calls = [{k: v for k, v in c.items() if k != "bytes"} for c in ranks[r]["train_calls"]]
            assert calls == [expected, expected]


def test_the_count_travels_exactly():
    # a float32 count is exact only to 2**24: 2**24 + 1 rounds to 2**24
    assert int(torch.tensor(2**24 + 1, dtype=torch.float32)) == 2**24
    for dtype in (torch.float32, torch.float64):
        counts = [2**40 + 3, 2**24 + 1, 0, 7]
        means = torch.randn(4, 5, dtype=dtype)
        m2s = torch.rand(4, 5, dtype=dtype)
        packed = torch.stack([pack_moments(c, m, v) for c, m, v in zip(counts, means, m2s, strict=True)])
        assert packed.dtype == dtype and packed.shape == (4, 10 + 8 // dtype.itemsize)
        got_counts, got_means, got_m2s = unpack_moments(packed, 5)
        assert got_counts.dtype == torch.int64 and got_counts.tolist() == counts
        assert torch.equal(got_means, means) and torch.equal(got_m2s, m2s)
        n, _, _ = merge_moments(got_counts, got_means, got_m2s)
        assert n.dtype == torch.int64 and n.item() == sum(counts)


def test_ring_values():
    # the network of chapter 8: two layers of 64 channels, 9098 parameters
    v = ring_values(4, [64, 64], 9098)
    assert v["batch norm"] == 3 * 129 * 2 + 2 * 3 / 4 * 128 * 2
    assert v["gradients"] == 2 * 3 / 4 * 9098
    assert ring_values(1, [64], 10) == {"batch norm": 0, "gradients": 0}
    # batch norm's traffic grows with K, the gradients' stays below 2P
    ratios = [ring_values(k, [64, 64], 9098)["batch norm"] / ring_values(k, [64, 64], 9098)["gradients"]
              for k in (4, 64)]
    assert 0.07 < ratios[0] < 0.09 and 0.9 < ratios[1] < 0.97


def _payload_of(op: str, m: int) -> tuple[int, float]:
    """Bytes an all-gather or all-reduce of m float64 sends from this process, less the framing."""
    t = torch.ones(m, dtype=torch.float64)
    out = torch.empty(torch.distributed.get_world_size() * m, dtype=torch.float64)
    gather = getattr(torch.distributed, "all_gather_single", None) or torch.distributed.all_gather_into_tensor
    header = header_bytes()
    torch.distributed.barrier()
    before = written()
    if op == "all_gather":
        gather(out, t)
    else:
        torch.distributed.all_reduce(t)
    after = written()
    return after[0] - before[0] - header * (after[1] - before[1]), header


@pytest.mark.skipif(written() is None, reason="the system does not count the bytes a process writes")
def test_gloo_moves_what_a_ring_moves(cluster):
    k, m = 4, 10_000
    for op, values in (("all_gather", (k - 1) * m), ("all_reduce", 2 * (k - 1) / k * m)):
        for payload, header in cluster(k).run(_payload_of, op, m):
            assert 0 < header < 1000  # a few dozen bytes of framing per message
            assert abs(payload - 8 * values) <= 8 * k, (op, payload, 8 * values)  # blocks of m / k


def test_float32_variance_across_shards_with_a_large_offset(cluster):
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(65536, 8, generator=g, dtype=torch.float64) + 1e4
    sizes = [40000, 1, 0, 25535]
    (ranks,) = cluster(4).map(sync_batch_norm_steps, [{
        "xs": [x64.float()], "douts": [torch.ones(65536, 8)], "sizes": sizes,
        "layer_kwargs": {"momentum": 1.0, "affine": False},
    }])
    state = ranks[0]["state"]
    assert bn.rel_error(state["running_var"], x64.var(0)) <= 1e-3
    assert bn.rel_error(state["running_mean"], x64.mean(0)) <= 1e-6
    out = torch.cat([r["out"][0] for r in ranks]).double()
    assert bn.rel_error(out.var(0, unbiased=False), torch.ones(8, dtype=torch.float64)) <= 1e-3


def test_merge_moments_is_exact_and_accurate_in_float32():
    g = torch.Generator().manual_seed(1)
    x64 = torch.randn(30000, 5, generator=g, dtype=torch.float64) * 0.5 + 1e4
    shards = x64.float().split([20000, 3, 0, 9997])
    counts, means, m2s = zip(*map(local_moments, shards), strict=True)
    n, mean, m2 = merge_moments(torch.tensor(counts), torch.stack(means), torch.stack(m2s))
    assert int(n) == 30000
    assert bn.rel_error(m2 / n, x64.var(0, unbiased=False)) <= 1e-3
    assert bn.rel_error(mean, x64.mean(0)) <= 1e-6
    # the shortcut E[x^2] - E[x]^2 in float32 loses every digit here
    x = x64.float()
    naive = (x * x).mean(0) - x.mean(0) ** 2
    assert bn.rel_error(naive, x64.var(0, unbiased=False)) > 0.5
    counts, means, m2s = zip(*map(local_moments, x64[:30].split([7, 11, 12])), strict=True)
    n, mean, m2 = merge_moments(torch.tensor(counts), torch.stack(means), torch.stack(m2s))
    torch.testing.assert_close(m2 / (n - 1), x64[:30].var(0), **tolerances(torch.float64))


def make_model(dims: int) -> nn.Module:
    """A small network whose batch norm sees ``dims``-D inputs; PyTorch's and this course's layers."""
    torch.manual_seed(dims)
    if dims == 2:
        layers = [nn.Linear(5, 6, bias=False), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)]
    else:
        conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[dims]
        layers = [conv(2, 4, 3, padding=1), bn.nn.BatchNorm2d(4) if dims == 4 else TORCH_BN[dims](4),
                  nn.ReLU(), conv(4, 3, 1)]
    return nn.Sequential(*layers).double()


def dot_loss_one_process(model: nn.Module, batches, lr: float, k: int) -> dict:
    """What data-parallel training with synchronized batch norm computes, in one process."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for x, dy in batches:
        opt.zero_grad()
        ((model(x) * dy).sum() / k).backward()  # DDP averages the K processes' gradients
        opt.step()
    return model.state_dict()


@pytest.mark.parametrize(("k", "all_dims"), [(2, (3, 5)), (4, (2, 4))])
def test_inside_distributed_data_parallel(cluster, k, all_dims):
    cases, refs = [], []
    for dims in all_dims:
        shape = {2: (12, 5), 3: (12, 2, 7), 4: (12, 2, 5, 4), 5: (12, 2, 3, 4, 3)}[dims]
        g = torch.Generator().manual_seed(dims)
        data = [(torch.randn(shape, generator=g, dtype=torch.float64) + 1,
                 torch.randn(12, 3, *shape[2:], generator=g, dtype=torch.float64)) for _ in range(3)]
        sizes = [7, 5] if k == 2 else [6, 0, 1, 5]
        model = make_model(dims)
        cases.append({"model": model, "batches": data, "lr": 0.1, "sizes": sizes, "loss": "dot"})
        refs.append(dot_loss_one_process(copy.deepcopy(model), data, 0.1, k))
    for ranks, ref in zip(cluster(k).map(data_parallel_train, cases), refs, strict=True):
        for r in ranks:
            assert list(r["state"]) == list(ref)
            for key, value in ref.items():
                bn.testing.assert_close(r["state"][key], value, rtol=1e-10, atol=1e-12, what=key)


def test_one_process_reproduces_data_parallel_training(cluster):
    """Synchronized: batch norm over the whole batch. Per-device: ghost batch norm of B / K."""
    k = 4
    bn.seed_everything(0)
    model = bn.models.mlp([6, 8, 8, 3], norm="bn").double()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 6, generator=g, dtype=torch.float64) * 2 + 1,
             torch.randint(3, (16,), generator=g)) for _ in range(4)]
    cases = [{"model": model, "batches": data, "lr": 0.2, "sync": sync} for sync in (False, True)]
    # synchronized within two groups of two: the same steps as ghost batch norm over B / 2
    cases.append({"model": model, "batches": data, "lr": 0.2, "sync": True, "groups": [[0, 1], [2, 3]]})
    for case, ranks in zip(cases, cluster(k).map(data_parallel_train, cases), strict=True):
        grouped = "groups" in case
        whole = case["sync"] and not grouped  # batch norm over the whole batch
        one = train_one_process(model, data, 0.2, devices=2 if grouped else k, sync=whole)
        assert any(isinstance(m, GhostBatchNorm) for m in one.modules()) != whole
        params = {name for name, _ in one.named_parameters()}
        for key, value in one.state_dict().items():
            if grouped and key not in params:
                continue  # each group keeps its own running statistics
            for r in ranks:
                bn.testing.assert_close(r["state"][key], value, rtol=1e-10, atol=1e-12, what=key)


def test_make_batches_draws_what_train_draws():
    bn.seed_everything(0)
    model = bn.models.mlp([64, 16, 10], norm="bn")
    data = bn.data.digits()
    one = train_one_process(model, make_batches(data, 32, 50, seed=3), lr=0.05)
    bn.train([model], data, 50, 0.05, seeds=[3], batch_size=32, progress=False)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(one.state_dict()[key], value, rtol=1e-4, atol=1e-6)  # float rounding


def test_bad_input_fails_in_every_process_and_the_cluster_survives(cluster):
    c = cluster(2)
    case = {"xs": [torch.randn(1, 3)], "douts": [torch.randn(1, 3)], "sizes": [1, 0]}  # 1 value in all
    with pytest.raises(WorkerError, match="expected more than 1 value per channel when training, in the "
                                          "global batch"):
        c.map(sync_batch_norm_steps, [case])
    assert not c.closed
    assert c.run(torch.distributed.get_world_size) == [2, 2]


def test_a_process_that_hangs_is_ended():
    with Cluster(2, timeout=60) as c:
        procs = list(c._procs)
        with pytest.raises(TimeoutError):  # process 1 waits in a collective process 0 never joins
            c.run(_hang_in_rank_one, timeout=2)
        assert c.closed and all(not p.is_alive() for p in procs)


def _hang_in_rank_one():
    if torch.distributed.get_rank() == 1:
        torch.distributed.all_reduce(torch.ones(1))


# ---------------------------------------------------------------------------------------------
# One process, no process group


def test_without_a_process_group_it_is_batch_norm():
    assert not torch.distributed.is_initialized()
    g = torch.Generator().manual_seed(0)
    ours, ref = SyncBatchNorm(3, momentum=0.2), nn.BatchNorm2d(3, momentum=0.2)
    for step in range(3):
        x = torch.randn(4, 3, 2, 5, generator=g) * 2 + step
        torch.testing.assert_close(ours(x), ref(x), **tolerances(torch.float32))
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x), **tolerances(torch.float32))
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, **tolerances(torch.float32))
    torch_sync = nn.SyncBatchNorm(3)
    torch_sync.load_state_dict(ours.state_dict())  # the same state_dict keys as PyTorch's
    ours.load_state_dict(torch_sync.state_dict())


def test_constructor_and_errors_match_torch():
    args = (4, 1e-3, None, True, False)
    ours, ref = SyncBatchNorm(*args, bias=False), nn.SyncBatchNorm(*args, bias=False)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()] == ["weight"]
    assert ours.running_mean is None and ours.process_group is None
    with pytest.raises(ValueError, match="at least 2 dims, got 1D"):
        SyncBatchNorm(4)(torch.randn(4))
    with pytest.raises(ValueError, match=r"SyncBatchNorm\(4\) expected 4 channels in dim 1, got 3"):
        SyncBatchNorm(4)(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        SyncBatchNorm(4)(torch.randn(1, 4))


def test_convert_sync_batchnorm_converts_torch_and_our_layers():
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4), bn.nn.BatchNorm2d(4),
                          nn.Sequential(nn.Linear(4, 4), bn.nn.BatchNorm1d(4, momentum=None, bias=False)),
                          nn.SyncBatchNorm(4), GhostBatchNorm(4, ghost_size=2))
    model[1].eval()
    params = {id(p) for p in model.parameters()}
    buffers = [id(b) for b in model.buffers()]
    converted = SyncBatchNorm.convert_sync_batchnorm(model, process_group="group")
    assert converted is model
    assert [type(m).__name__ for m in model.modules()].count("SyncBatchNorm") == 4
    assert type(model[0]) is nn.Conv2d and type(model[5]) is GhostBatchNorm  # others untouched
    assert not model[1].training and model[2].training
    assert model[3][1].momentum is None and model[3][1].bias is None and model[1].process_group == "group"
    assert {id(p) for p in model.parameters()} == params  # the same tensors, shared
    assert [id(b) for b in model.buffers()] == buffers
    layer = bn.nn.BatchNorm3d(3)
    assert type(SyncBatchNorm.convert_sync_batchnorm(layer)) is SyncBatchNorm


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs 2 GPUs")
def test_nccl_on_two_gpus():
    xs, douts = batches((12, 3, 4), torch.float32)
    with Cluster(2, backend="nccl", timeout=120) as c:
        (ranks,) = c.map(sync_batch_norm_steps, [{"xs": xs, "douts": douts, "sizes": [7, 5]}])
    outs, dxs, grads, state = reference(xs, douts, {}, torch.float32)
    tol = tolerances(torch.float32)
    for step in range(len(xs)):
        bn.testing.assert_close(torch.cat([r["out"][step] for r in ranks]), outs[step], **tol, what="outputs")
        bn.testing.assert_close(torch.cat([r["dx"][step] for r in ranks]), dxs[step], **tol, what="dx")
    for key, value in state.items():
        bn.testing.assert_close(ranks[0]["state"][key], value, **tol, what=key)


def _no_host_sync_on_the_gpu() -> float:
    """Forward and backward of SyncBatchNormFunction on this process's GPU, with any host sync an error."""
    device = torch.device("cuda", torch.cuda.current_device())
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(64, 8, 5, generator=g, device=device) * 2 + 3
    weight, bias = torch.rand(8, device=device) + 0.5, torch.randn(8, device=device)
    xr, w, b = (t.clone().requires_grad_() for t in (x, weight, bias))
    torch.distributed.all_reduce(torch.ones(1, device=device))  # the communicator starts outside
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, _, _ = SyncBatchNormFunction.apply(xr, w, b, 1e-5, torch.distributed.group.WORLD)
        out.backward(torch.ones_like(out))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = nn.functional.batch_norm(x, None, None, weight, bias, training=True)
    return (out.detach() - ref).abs().max().item()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (NCCL)")
def test_no_host_sync_on_a_gpu():
    with Cluster(1, backend="nccl", timeout=120) as c:
        (gap,) = c.run(_no_host_sync_on_the_gpu)
    assert gap < 1e-4


def test_bfloat16_input_keeps_float32_statistics(cluster):
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(12, 3, 5, generator=g) * 2 + 30).bfloat16()
    dout = torch.randn(12, 3, 5, generator=g).bfloat16()
    (ranks,) = cluster(2).map(sync_batch_norm_steps, [{"xs": [x], "douts": [dout], "sizes": [7, 5]}])
    outs, dxs, grads, state = reference([x.float()], [dout.float()], {}, torch.float32)
    out = torch.cat([r["out"][0] for r in ranks])
    assert out.dtype == torch.bfloat16 and ranks[0]["state"]["running_var"].dtype == torch.bfloat16
    # bfloat16 keeps 8 bits: outputs of order 1 to within about 1e-2
    bn.testing.assert_close(out.float(), outs[0], rtol=2e-2, atol=2e-2, what="bfloat16 outputs")
    bn.testing.assert_close(torch.cat([r["dx"][0] for r in ranks]).float(), dxs[0], rtol=2e-2, atol=2e-2,
                            what="bfloat16 input gradients")
    bn.testing.assert_close(ranks[0]["state"]["running_var"].float(), state["running_var"], rtol=2e-2,
                            atol=1e-2, what="bfloat16 running_var")
