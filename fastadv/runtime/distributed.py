"""torchrun plumbing: the process group from the environment, rank info, collectives, sharded evaluation.

A plain process (no torchrun) is rank 0 of 1 and every helper here is then a no-op, so the
Trainer and the evaluator run the same code with one process or many. Under torchrun
(RANK / WORLD_SIZE / LOCAL_RANK set) `setup` joins the process group: NCCL on CUDA (one GPU
per process, cuda:LOCAL_RANK), gloo on the CPU, with `train.dist_timeout_s` as the limit for
every collective, so a rank that died or hangs stops the others with an error, not a hang.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import inspect
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from fastadv.data.seeding import mix
from fastadv.data.subset import IndexSubset
from fastadv.errors import FastadvError
from fastadv.runtime.device import resolve_device

# Test-only fault injection (documented in docs/guides/multi-gpu.md): the last rank exits / sleeps when its
# progress reaches this optimizer step, on the first attempt of a torchrun job only.
DIE_AT_STEP = "FASTADV_TEST_DIE_AT_STEP"
HANG_AT_STEP = "FASTADV_TEST_HANG_AT_STEP"


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands: rank 0 of 1 in a plain process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""  # "" = no process group
    timeout_s: float = 1800.0

    @property
    def active(self) -> bool:
        return bool(self.backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def restart_count() -> int:
    """How often torchrun restarted this job (--max-restarts); 0 on the first attempt."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_info() -> RankInfo:
    if not _active():
        return RankInfo()
    return RankInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_backend())


def is_main() -> bool:
    """True on rank 0 and in a plain process: the one that logs, writes files and shows progress."""
    return not _active() or dist.get_rank() == 0


def setup(device_setting: str, timeout_s: float) -> tuple[RankInfo, torch.device]:
    """This process's rank info and device; joins the process group when launched by torchrun.

    Under torchrun, `auto` / `cuda` mean cuda:LOCAL_RANK (NCCL); `cpu` uses gloo. Calling it
    again (evaluating several runs) reuses the group.
    """
    device = resolve_device(device_setting)
    if not launched_by_torchrun():
        return RankInfo(), device
    try:
        rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    except ValueError as exc:
        raise FastadvError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun): {exc}") from None
    if device.type == "cuda":
        if device.index is not None and world > 1:
            raise FastadvError(f"train.device={device_setting!r}: under torchrun each process uses cuda:LOCAL_RANK; "
                               "set train.device=cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
        if local >= torch.cuda.device_count():
            raise FastadvError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPU(s) are visible: "
                               "use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not _active():
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise FastadvError(f"RANK is set but {key} is not: launch with torchrun (see docs/guides/multi-gpu.md)")
        # NCCL: a collective past the timeout aborts the communicator (the watchdog tears the process down).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        store = _attempt_store(world, timeout_s)
        if store is not None:
            kwargs.update(store=store, rank=rank, world_size=world)
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kwargs)
        atexit.register(shutdown)
    return RankInfo(rank, world, local, dist.get_backend(), timeout_s), device


def _attempt_store(world: int, timeout_s: float) -> Any:
    """A store scoped to this torchrun attempt, or None for the default (env://).

    torchrun shares its rendezvous TCPStore with the workers; after a restart (--max-restarts)
    the process group then reads the previous attempt's addresses and fails to connect
    (pytorch/pytorch#135712). On one node the restart count is the same for every worker, so
    the keys get an attempt prefix; on several nodes it is not: set
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun there (docs/guides/multi-gpu.md).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timedelta(seconds=timeout_s))
    return dist.PrefixStore(f"fastadv/attempt_{restart_count()}", store)


def shutdown() -> None:
    if _active():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The global RNG seed of `rank`: `seed` itself on rank 0 (a plain run is unchanged), hashed on the others."""
    return seed if rank == 0 else mix(seed, rank, 0xDD9)


# ----------------------------------------------------------------------------- failures
def _is_collective_failure(exc: BaseException) -> bool:
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)  # gloo raises plain RuntimeErrors naming itself ("[.../gloo/transport/tcp/pair.cc] ...")
    return isinstance(exc, RuntimeError) and any(s in text for s in ("gloo", "NCCL", "ProcessGroup", "c10d"))


@contextlib.contextmanager
def failures_named(info: RankInfo) -> Iterator[None]:
    """Turn a failed collective (a peer died, or hung past the timeout) into a FastadvError naming both causes."""
    try:
        yield
    except Exception as exc:
        if not info.active or not _is_collective_failure(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FastadvError(
            f"rank {info.rank} of {info.world_size}: a collective with the other ranks failed: another rank died "
            f"or did not answer within train.dist_timeout_s={info.timeout_s:g}s ({first}). The last checkpoint "
            "is intact; torchrun --max-restarts resumes from it"
        ) from exc


def inject_test_fault(step: int, info: RankInfo) -> None:
    """Test-only: FASTADV_TEST_DIE_AT_STEP / FASTADV_TEST_HANG_AT_STEP make the last rank exit(1) / sleep
    when its progress reaches that step, on a torchrun job's first attempt."""
    if not info.active or info.rank != info.world_size - 1 or info.world_size < 2 or restart_count() > 0:
        return
    if os.environ.get(DIE_AT_STEP) == str(step):
        os._exit(1)
    if os.environ.get(HANG_AT_STEP) == str(step):
        time.sleep(3600)  # bounded, so a stray test process cannot outlive a CI run


# ----------------------------------------------------------------------------- collectives
def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over all ranks (a new tensor on t's device); `t` itself in a plain process."""
    if not _active():
        return t
    out = t.detach().to(_comm_device(), copy=True)
    dist.all_reduce(out)
    return out.to(t.device)


def all_gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, rank 1, ...] on every rank (picklable objects)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_objects(obj: Any) -> list[Any] | None:
    """[obj of rank 0, rank 1, ...] on rank 0, None elsewhere; [obj] in a plain process."""
    if not _active():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _digest(value: Any, h: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"{t.dtype}{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            h.update(repr(k).encode())
            _digest(value[k], h)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _digest(v, h)
    else:
        h.update(repr(value).encode())


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def gather_rank_local(state: dict[str, Any] | None) -> dict[str, list[Any]] | None:
    """The entries of `state` that differ between ranks, gathered to rank 0: {key: [rank 0's, rank 1's, ...]}.

    Entries equal on every rank (compared by digest) are not sent, so a big shared entry (a
    weight average) costs nothing. None on other ranks, in a plain process, and when all agree.
    """
    if not _active() or not state:
        return None
    digests = {}
    for k, v in state.items():
        h = hashlib.sha256()
        _digest(v, h)
        digests[k] = h.hexdigest()
    every = all_gather_objects(digests)
    differ = sorted(k for k in state if any(d.get(k) != digests[k] for d in every))
    if not differ:
        return None
    gathered = gather_objects({k: _to_cpu(state[k]) for k in differ})
    if gathered is None:
        return None
    return {k: [g[k] for g in gathered] for k in differ}


# ----------------------------------------------------------------------------- models
def wrap_model(model: nn.Module, attack_model: nn.Module, info: RankInfo) -> nn.Module:
    """DistributedDataParallel(model) carrying `attack_model` (the inner, possibly compiled module).

    Attacks call `attack_model` (fastadv.attacks.attack_view): their many frozen-parameter
    forwards must not go through DDP, whose gradient buckets expect one forward per backward.
    The caller compiles the returned module (compile(DDP(model)), as PyTorch recommends).
    """
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.local_rank] if next(model.parameters()).is_cuda else None
    # Buffers (BatchNorm statistics) are made equal after every step instead (broadcast_buffers below),
    # so the attack, the logs and the checkpoint all see rank 0's.
    no_buffer_sync = ({"forward_sync_buffers": False}  # newer PyTorch; still syncs at construction
                      if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})
    ddp = DistributedDataParallel(model, device_ids=device_ids, **no_buffer_sync)
    broadcast_buffers(model)  # older PyTorch skips them at construction with broadcast_buffers=False
    object.__setattr__(ddp, "attack_model", attack_model)  # a plain attribute, not a registered submodule
    return ddp


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: one broadcast per dtype."""
    if not _active():
        return
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for b in module.buffers():
        groups.setdefault((b.dtype, b.device), []).append(b)
    for tensors in groups.values():
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        dist.broadcast(flat, src=0)
        offset = 0
        for t in tensors:
            t.data.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def lr_factor(rule: str, world_size: int) -> float:
    """train.lr_scaling: none = 1, linear = world size, sqrt = sqrt(world size)."""
    return {"none": 1.0, "linear": float(world_size), "sqrt": world_size ** 0.5}[rule]


# ----------------------------------------------------------------------------- sharded evaluation
class BatchShard:
    """One rank's share of an evaluation: the whole batches b with b % world_size == rank.

    Every batch holds exactly the images a single process would put in it, and `batches()`
    seeds torch's RNG from (seed, batch number) before each one, so the attack's random start,
    and so every prediction, is the single-process one whichever rank computes it. `gather`
    merges the ranks' rows in dataset order. In a plain process the shard is the whole dataset.
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int) -> None:
        info = rank_info()
        n = len(dataset)
        self.batch_ids = list(range(info.rank, -(-n // batch_size), info.world_size))
        self.seed = seed
        if info.world_size == 1:
            self.dataset, self.positions = dataset, None
        else:
            items = [i for b in self.batch_ids for i in range(b * batch_size, min(n, (b + 1) * batch_size))]
            self.dataset, self.positions = IndexSubset(dataset, items), items

    def batches(self, loader: Any) -> "_Seeded":
        return _Seeded(loader, self.batch_ids, self.seed)

    def gather(self, rows: dict[str, Any], key: str = "index") -> dict[str, Any]:
        """Rows of every rank on every rank, sorted by dataset index; list fields concatenated, numbers summed."""
        if self.positions is not None:
            rows = {**rows, key: [self.positions[i] for i in rows[key]]}
        if not _active():
            return rows
        parts = all_gather_objects(rows)
        order = sorted(((i, r, j) for r, part in enumerate(parts) for j, i in enumerate(part[key])))
        out: dict[str, Any] = {}
        for name, value in rows.items():
            if isinstance(value, list):
                out[name] = [parts[r][name][j] for _, r, j in order]
            else:
                out[name] = sum(part[name] for part in parts)
        return out


class _Seeded:
    """Iterate a loader, re-seeding torch's RNG with mix(seed, global batch number) before each batch."""

    def __init__(self, loader: Any, batch_ids: list[int], seed: int) -> None:
        self.loader, self.batch_ids, self.seed = loader, batch_ids, seed

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for b, batch in zip(self.batch_ids, self.loader):
            torch.manual_seed(mix(self.seed, b))
            yield batch
