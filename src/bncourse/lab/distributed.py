"""Data-parallel training on one machine: K processes, one process group, batch norm across them.

:class:`Cluster` starts K worker processes once and runs functions of this package in every one of
them, with ``torch.distributed`` initialized (gloo on the CPU; NCCL with one GPU per process, which
only the GPU tests use and which has not run in this course's builds). It listens on 127.0.0.1 only,
on a port the operating system picks, and always ends its processes: on :meth:`Cluster.close`, on
leaving a ``with`` block, when a call fails or runs past its time limit, and when the program exits.
The functions it runs are the workers of chapter 8 below, and what they measure: the collectives and
host syncs of a step, the bytes it sends (:func:`written`), the ring payloads it should send
(:func:`ring_values`).
"""

from __future__ import annotations

import atexit
import copy
import datetime
import inspect
import multiprocessing as mp
import os
import queue
import socket
import time
import traceback
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch import nn

from ..smallbatch import GhostBatchNorm, replace_norms
from ..sync import SyncBatchNorm
from .data import Split
from .data import batches as shuffled_batches
from .device import generator

__all__ = [
    "Cluster",
    "WorkerError",
    "counting_collectives",
    "counting_host_syncs",
    "data_parallel_train",
    "header_bytes",
    "make_batches",
    "ring_values",
    "shard",
    "step_costs",
    "subgroup",
    "sync_batch_norm_steps",
    "torch_sync_batch_norm_error",
    "train_one_process",
    "written",
]

HOST = "127.0.0.1"
GRACE_SECONDS = 10.0  # after one process fails, how long the others get to report before they are ended


class WorkerError(RuntimeError):
    """A function raised in a worker process; the message holds that process's traceback."""


def _loopback_interface() -> str | None:
    """The loopback network interface's name (``lo`` on Linux, ``lo0`` on macOS), if there is one."""
    try:
        names = {name for _, name in socket.if_nameindex()}
    except OSError:
        return None
    return next((name for name in ("lo", "lo0") if name in names), None)


def _serve(rank: int, world_size: int, port: int, backend: str, timeout: float, tasks, results) -> None:
    """A worker process: join the process group, then run the functions sent to it until told to stop."""
    if backend == "gloo" and "GLOO_SOCKET_IFNAME" not in os.environ:
        interface = _loopback_interface()  # gloo's own sockets on the loopback interface too
        if interface is not None:
            os.environ["GLOO_SOCKET_IFNAME"] = interface
    torch.set_num_threads(1)
    limit = datetime.timedelta(seconds=timeout)
    store = dist.TCPStore(HOST, port, is_master=False, timeout=limit)
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=limit)
    parent = mp.parent_process()
    try:
        while True:
            try:
                task = tasks.get(timeout=1.0)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    return  # the program that started us is gone
                continue
            if task is None:
                return
            fn, args, kwargs = task
            try:
                results.put((rank, True, fn(*args, **kwargs)))
            except Exception:
                results.put((rank, False, traceback.format_exc()))
    finally:
        dist.destroy_process_group()


def _context():
    """A forkserver (one import of torch, then cheap forks) where available, else spawn."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # torch._dynamo: DistributedDataParallel imports it on first use, seconds per process; the
        # forkserver imports it once and every worker inherits it
        ctx.set_forkserver_preload([__name__, "torch._dynamo"])
        return ctx
    return mp.get_context("spawn")


def _stop_forkserver() -> None:
    """Stop the forkserver and collect its exit status, so that no finished process is left behind."""
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)  # the way CPython's own tests stop it
    if stop is not None:
        stop()


atexit.register(_stop_forkserver)


def _end(procs: list, tasks: list, wait: float = 5.0) -> None:
    """Ask each worker to stop, then terminate and kill whatever is still running; join them all."""
    for q in tasks:
        try:
            q.put(None)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + wait
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(2.0)
        if p.is_alive():
            p.kill()
            p.join()
    for q in tasks:
        q.close()
        q.join_thread()


def _ready() -> int:
    return dist.get_rank()


def _each(fn: Callable, cases: list[dict]) -> list:
    return [fn(**case) for case in cases]


class Cluster:
    """``world_size`` worker processes in one process group, reused for many calls.

    ``run(fn, *args)`` calls ``fn(*args)`` in every process and returns the results in rank order;
    ``fn`` must be importable (a function of this package, or of a module on ``sys.path``), and its
    results are sent back by pickling. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, world_size: int, backend: str = "gloo", timeout: float = 120.0):
        if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be 'gloo' (CPU) or 'nccl' (CUDA), got {backend!r}")
        if backend == "nccl" and torch.cuda.device_count() < world_size:
            raise RuntimeError(f"nccl needs one GPU per process: {world_size} processes, "
                               f"{torch.cuda.device_count()} GPUs")
        self.world_size, self.backend, self.timeout = world_size, backend, timeout
        ctx = _context()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind((HOST, 0))  # loopback only; the system picks a free port, no race
            listener.listen(world_size)
            port = listener.getsockname()[1]
            self._store = dist.TCPStore(HOST, port, is_master=True, wait_for_workers=False,
                                        timeout=datetime.timedelta(seconds=timeout),
                                        master_listen_fd=os.dup(listener.fileno()))
        self._tasks = [ctx.Queue() for _ in range(world_size)]
        self._results = ctx.Queue()
        self._procs = [
            ctx.Process(target=_serve, name=f"bncourse-rank-{rank}", daemon=True,
                        args=(rank, world_size, port, backend, timeout, self._tasks[rank], self._results))
            for rank in range(world_size)
        ]
        self._end = weakref.finalize(self, _end, self._procs, self._tasks)
        try:
            for p in self._procs:
                p.start()
            self.run(_ready)
        except BaseException:
            self.close()
            raise

    @property
    def closed(self) -> bool:
        return not self._end.alive

    def run(self, fn: Callable, *args, timeout: float | None = None, **kwargs) -> list:
        """``fn(*args, **kwargs)`` in every process; the results in rank order.

        If ``fn`` raises in any process, raises :class:`WorkerError` with that traceback. If a process
        dies, or the call takes longer than ``timeout`` seconds (default: the cluster's), the cluster
        is closed (its processes ended) before the error is raised.
        """
        if self.closed:
            raise RuntimeError("this Cluster is closed; start a new one")
        for q in self._tasks:
            q.put((fn, args, kwargs))
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        results: list = [None] * self.world_size
        errors: dict[int, str] = {}
        pending = set(range(self.world_size))
        while pending:
            try:
                rank, ok, value = self._results.get(timeout=0.2)
            except queue.Empty:
                self._check_alive(deadline, errors)
                continue
            pending.discard(rank)
            if ok:
                results[rank] = value
            else:
                errors[rank] = value
                deadline = min(deadline, time.monotonic() + GRACE_SECONDS)
        if errors:
            rank = min(errors)
            raise WorkerError(f"{fn.__name__} failed in process {rank} of {self.world_size}:\n{errors[rank]}")
        return results

    def _check_alive(self, deadline: float, errors: dict[int, str]) -> None:
        dead = [p for p in self._procs if not p.is_alive()]
        late = time.monotonic() > deadline
        if not dead and not late:
            return
        self.close()
        if errors:
            rank = min(errors)
            raise WorkerError(f"process {rank} failed and the others did not finish:\n{errors[rank]}")
        if dead:
            raise RuntimeError(f"worker process {dead[0].name} exited with code {dead[0].exitcode}")
        raise TimeoutError("the processes did not finish within the time limit; the cluster is closed")

    def map(self, fn: Callable, cases: list[dict], timeout: float | None = None) -> list[list]:
        """``fn(**case)`` for each case, in one round trip; ``result[i][rank]`` is case ``i`` on ``rank``."""
        per_rank = self.run(_each, fn, cases, timeout=timeout)
        return [list(r) for r in zip(*per_rank, strict=True)]

    def close(self) -> None:
        """End every worker process (asked first, then terminated, then killed) and join them."""
        self._end()
        self._store = None  # stops listening

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def shard(t: torch.Tensor, sizes: list[int] | None = None, group=None) -> torch.Tensor:
    """This process's part of ``t`` along dim 0: ``sizes[rank]`` rows, or an even split without sizes."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if sizes is None:
        return torch.tensor_split(t, world)[rank]
    if len(sizes) != world or sum(sizes) != t.shape[0]:
        raise ValueError(f"expected {world} shard sizes adding up to {t.shape[0]}, got {list(sizes)}")
    return t.split(list(sizes))[rank]


# ---------------------------------------------------------------------------------------------
# Workers: run in every process of a Cluster


def _device() -> torch.device:
    """This process's device: its GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextmanager
def counting_collectives() -> Iterator[Counter]:
    """Count the calls of ``torch.distributed``'s collectives made from Python inside the block.

    Yields a ``Counter`` of calls by name and of ``"bytes"`` sent from this process. Collectives made
    from C++ (DistributedDataParallel's gradient all-reduce) are not seen.
    """
    counts: Counter = Counter()
    names = [n for n in ("all_gather", "all_gather_into_tensor", "all_gather_single", "all_reduce",
                         "broadcast", "reduce_scatter_tensor") if hasattr(dist, n)]
    originals = {n: getattr(dist, n) for n in names}

    def counted(name, fn):
        def call(*args, **kwargs):
            counts[name] += 1
            sent = args[1] if name.startswith("all_gather") and len(args) > 1 else args[0]
            if isinstance(sent, torch.Tensor):
                counts["bytes"] += sent.numel() * sent.element_size()
            return fn(*args, **kwargs)
        return call

    for n in names:
        setattr(dist, n, counted(n, originals[n]))
    try:
        yield counts
    finally:
        for n, fn in originals.items():
            setattr(dist, n, fn)


HOST_SYNCS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


@contextmanager
def counting_host_syncs() -> Iterator[Counter]:
    """Count, by name, the calls inside the block that bring a tensor's value to Python.

    ``.item()``, ``.tolist()``, ``.numpy()``, ``.cpu()``, and ``bool``, ``int``, ``float`` or an index
    of a tensor: on a GPU each of them makes the host wait until the device has computed the value.
    Calls that PyTorch makes in C++ are not seen (on a GPU, ``torch.cuda.set_sync_debug_mode``
    sees those).
    """
    counts: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in HOST_SYNCS}
    own = {name for name in HOST_SYNCS if name in vars(torch.Tensor)}  # the others are inherited

    def counted(name, fn):
        def call(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return call

    for name, fn in originals.items():
        setattr(torch.Tensor, name, counted(name, fn))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            if name in own:
                setattr(torch.Tensor, name, fn)
            else:
                delattr(torch.Tensor, name)


def written() -> tuple[int, int] | None:
    """``(bytes, writes)`` this process has written so far to files, pipes and sockets, and the number
    of write calls that wrote them, or None where the system does not say (Linux's ``/proc/self/io``:
    ``wchar``, ``syscw``). Taken before and after a step of training between processes that write
    nothing else, the differences are what the step sent over the wire, and in how many messages."""
    try:
        with open("/proc/self/io") as f:
            fields = dict(line.split(": ") for line in f.read().splitlines())
        return int(fields["wchar"]), int(fields["syscw"])
    except (OSError, KeyError, ValueError):
        return None


def _sent(before, after) -> tuple[int | None, int | None]:
    if before is None or after is None:
        return None, None
    return after[0] - before[0], after[1] - before[1]


def header_bytes(values: int = 4096) -> float | None:
    """The bytes a backend adds to each message it writes, measured: an all-gather of ``values``
    float64 per process sends ``(K - 1) * values * 8`` bytes of payload; what it writes beyond that,
    per write call, is the framing. None where the system does not count writes."""
    t = torch.ones(values, dtype=torch.float64, device=_device())
    out = t.new_empty(dist.get_world_size() * values)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    for _ in range(2):  # the first call of a collective may set up connections
        dist.barrier()
        before = written()
        gather(out, t)
        after = written()
    sent, writes = _sent(before, after)
    if sent is None or not writes:
        return None
    return (sent - 8 * values * (dist.get_world_size() - 1)) / writes


def ring_values(k: int, channels: list[int], params: int) -> dict[str, float]:
    """Values one process sends per training step in a ring over ``k`` processes: a ring all-gather of
    ``m`` values per process sends ``(k - 1) * m``, a ring all-reduce of ``m`` sends ``2 (k - 1) / k * m``.

    ``"batch norm"``: for each synchronized layer of ``C`` channels, the forward all-gather of
    ``2C + 1`` (count, means, centred sums of squares) and the backward all-reduce of ``2C``.
    ``"gradients"``: the all-reduce of the ``params`` gradients.
    """
    if k < 1:
        raise ValueError(f"expected k >= 1 processes, got {k}")
    gather = sum((k - 1) * (2 * c + 1) for c in channels)
    reduce = sum(2 * (k - 1) / k * 2 * c for c in channels)
    return {"batch norm": gather + reduce, "gradients": 2 * (k - 1) / k * params}


_GROUPS: dict[tuple, list] = {}


def subgroup(groups: list[list[int]]):
    """This process's group among ``groups`` (lists of ranks that cover every process once).

    Every process must call it with the same ``groups`` (``torch.distributed.new_group`` is a
    collective); the groups are made once per process and reused.
    """
    key = tuple(tuple(g) for g in groups)
    ranks = sorted(r for g in key for r in g)
    if ranks != list(range(dist.get_world_size())):
        raise ValueError(f"expected groups covering the ranks 0 to {dist.get_world_size() - 1} once each, "
                         f"got {[list(g) for g in key]}")
    if key not in _GROUPS:
        _GROUPS[key] = [dist.new_group(list(g)) for g in key]
    rank = dist.get_rank()
    return next(pg for g, pg in zip(key, _GROUPS[key], strict=True) if rank in g)


def sync_batch_norm_steps(xs: list[torch.Tensor], douts: list[torch.Tensor], sizes: list[int] | None = None,
                          layer_kwargs: dict | None = None, state: dict | None = None,
                          groups: list[list[int]] | None = None) -> dict:
    """One :class:`~bncourse.sync.SyncBatchNorm` in this process, trained on its shard of each batch.

    For each batch ``x`` in ``xs`` (the whole global batch; this process takes its shard, ``sizes``
    or an even split) a forward and a backward with this process's shard of ``dout``. With
    ``groups`` (lists of ranks) the layer synchronizes only this process's group. Returns this
    process's outputs and input gradients (one per batch), its parameter gradients (accumulated over
    the batches), the layer's ``state_dict`` after the last batch, the collectives and the host syncs
    counted per training step, and the collectives of one eval-mode forward.
    """
    device = _device()
    kwargs = dict(layer_kwargs or {})
    if groups is not None:
        kwargs["process_group"] = subgroup(groups)
    layer = SyncBatchNorm(xs[0].shape[1], dtype=xs[0].dtype, device=device, **kwargs)
    if state is not None:
        layer.load_state_dict(state)
    outs, dxs, calls, syncs = [], [], [], []
    for x, dout in zip(xs, douts, strict=True):
        xr = shard(x, sizes).to(device).requires_grad_()
        dr = shard(dout, sizes).to(device)
        with counting_collectives() as counts, counting_host_syncs() as host:
            out = layer(xr)
            out.backward(dr)
        outs.append(out.detach().cpu())
        dxs.append(xr.grad.cpu())
        calls.append(dict(counts))
        syncs.append(dict(host))
    layer.eval()
    with counting_collectives() as eval_counts, torch.no_grad():
        layer(xs[-1].to(device))
    grads = {name: p.grad.cpu() for name, p in layer.named_parameters()}
    state = {k: v.cpu() for k, v in layer.state_dict().items()}
    return {"out": outs, "dx": dxs, "grads": grads, "state": state, "train_calls": calls,
            "host_syncs": syncs, "eval_calls": dict(eval_counts)}


def _data_parallel(model: nn.Module) -> nn.Module:
    """DistributedDataParallel that leaves each process's buffers alone after the start."""
    ddp = nn.parallel.DistributedDataParallel
    keyword = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters else (
        "broadcast_buffers")  # the older name
    return ddp(model, **{keyword: False})


def _loss(out: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "cross_entropy":
        return nn.functional.cross_entropy(out, target)  # mean over this process's shard
    if kind == "dot":
        return (out * target).sum()
    raise ValueError(f"loss must be 'cross_entropy' or 'dot', got {kind!r}")


def data_parallel_train(model: nn.Module, batches: list, lr: float, sync: bool = True,
                        sizes: list[int] | None = None, loss: str = "cross_entropy",
                        groups: list[list[int]] | None = None) -> dict:
    """Data-parallel training: ``model`` (a copy in each process) wrapped in DistributedDataParallel.

    Each process takes its shard of every ``(x, target)`` in ``batches`` (``sizes``, or an even
    split), plain SGD with learning rate ``lr``; DDP averages the gradients. With ``sync`` the batch
    norm layers are converted to :class:`~bncourse.sync.SyncBatchNorm` (synchronizing this
    process's group among ``groups``, or all processes); without, each process normalizes its own
    shard, keeps its own running statistics, and they are averaged at the end. Returns the trained
    ``state_dict``, the wall time of each step in seconds, the bytes this process wrote in each step
    (:func:`written`; None where the system does not say), and the collectives counted in the first
    step (those of the batch norm layers; DDP's own are made from C++).
    """
    device = _device()
    model = copy.deepcopy(model).to(device)
    if sync:
        group = None if groups is None else subgroup(groups)
        model = SyncBatchNorm.convert_sync_batchnorm(model, group)
    ddp = _data_parallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=lr)
    seconds, sent, calls = [], [], {}
    for i, (x, target) in enumerate(batches):
        xr, tr = shard(x, sizes).to(device), shard(target, sizes).to(device)
        before = written()
        start = time.perf_counter()
        with counting_collectives() if i == 0 else nullcontext() as counts:
            out = ddp(xr)
            opt.zero_grad(set_to_none=True)
            _loss(out, tr, loss).backward()
            opt.step()
        seconds.append(time.perf_counter() - start)
        sent.append(_sent(before, written())[0])
        calls = dict(counts) if i == 0 else calls
    if not sync:
        with torch.no_grad():
            for buffer in model.buffers():
                if buffer.is_floating_point():
                    dist.all_reduce(buffer)
                    buffer /= dist.get_world_size()
    return {"state": {k: v.cpu() for k, v in model.state_dict().items()}, "seconds": seconds,
            "bytes": sent, "collectives": calls}


def step_costs(model: nn.Module, batches: list, lr: float, groups: list[list[int]] | None = None,
               sizes: list[int] | None = None) -> dict:
    """Bytes sent and seconds taken by each data-parallel step, per-device against synchronized.

    Copies of ``model`` in DistributedDataParallel train side by side, one step each in turn (so a
    change in the machine's load hits all alike): ``"per-device"`` batch norm, ``"synchronized"``
    over all processes and, with ``groups``, ``"groups"`` (each process's group among them). Returns
    ``{name: {"bytes": [...], "writes": [...], "seconds": [...]}}``, one entry per step (bytes and
    write calls: :func:`written`, None where the system does not say).
    """
    device = _device()
    configs = {"per-device": None, "synchronized": dist.group.WORLD}
    if groups is not None:
        configs["groups"] = subgroup(groups)
    runs = {}
    for name, group in configs.items():
        m = copy.deepcopy(model).to(device)
        m = m if group is None else SyncBatchNorm.convert_sync_batchnorm(m, group)
        ddp = _data_parallel(m)
        runs[name] = (ddp, torch.optim.SGD(ddp.parameters(), lr=lr),
                      {"bytes": [], "writes": [], "seconds": []})
    for x, target in batches:
        xr, tr = shard(x, sizes).to(device), shard(target, sizes).to(device)
        for ddp, opt, record in runs.values():
            dist.barrier()  # start together: no process waits for another's previous step
            before = written()
            start = time.perf_counter()
            loss = nn.functional.cross_entropy(ddp(xr), tr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            record["seconds"].append(time.perf_counter() - start)
            sent, writes = _sent(before, written())
            record["bytes"].append(sent)
            record["writes"].append(writes)
    return {name: record for name, (_, _, record) in runs.items()}


def torch_sync_batch_norm_error() -> str:
    """What PyTorch's own ``torch.nn.SyncBatchNorm`` says when asked to train on the CPU."""
    try:
        nn.SyncBatchNorm(3)(torch.randn(4, 3))
    except (ValueError, RuntimeError) as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


# ---------------------------------------------------------------------------------------------
# The same training in one process


def make_batches(data: Split, batch_size: int, steps: int, seed: int) -> list[tuple]:
    """The first ``steps`` training batches, as :func:`bncourse.lab.trainer.train` draws them for ``seed``."""
    gen = generator(seed)
    out: list = []
    while len(out) < steps:
        out.extend(shuffled_batches(data.x_train, data.y_train, batch_size, gen))
    return out[:steps]


def train_one_process(model: nn.Module, batches: list, lr: float, devices: int = 1,
                      sync: bool = True) -> nn.Module:
    """What data-parallel training over ``devices`` computes, in one process; returns a trained copy.

    With ``sync`` (or one device) the batch norm layers see the whole batch; without, each of the
    ``devices`` shards is normalized alone: :class:`~bncourse.smallbatch.GhostBatchNorm` with ghost
    batches of ``batch / devices``. Plain SGD on the mean cross-entropy over the batch.
    """
    model = copy.deepcopy(model)
    if not sync and devices > 1:
        replace_norms(model, lambda m: GhostBatchNorm.like(m, batches[0][0].shape[0] // devices))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model
