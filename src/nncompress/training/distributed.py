"""Data-parallel training under `torchrun` on PyTorch's distributed engine (gloo on CPU, nccl on GPU).

Each rank trains on its shard of every batch (a DistributedSampler gives rank r the indices perm[r::world]
of the same (seed, epoch) permutation), and `training.train` runs forward/backward through
DistributedDataParallel, which averages the gradients across ranks during backward, g = (1/W)·Σ_r g_r: for a
mean loss over equal shards, the gradient of the whole batch. Compression callbacks keep addressing the plain
model by layer name; when one re-parametrizes a layer (a pruning mask, a codebook) the wrapper is rebuilt, and
structural changes between training phases (channel removal, QAT) get a fresh one. With CUDA each rank
trains on its own GPU, cuda:LOCAL_RANK, and the ranks talk over nccl; without it, on the CPU over gloo.

    torchrun --standalone --nproc-per-node 2 --no-python nncompress run-recipe recipes/agp.yaml --out runs/agp
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from nncompress.training.device import default_backend, resolve_device


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless running under torchrun with an initialized process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(backend: str | None = None, device: str | torch.device | None = "auto") -> tuple[int, int]:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR…); a no-op outside torchrun.

    Backend: the one the training device needs (nccl for CUDA, gloo for CPU) unless given. On CUDA the rank
    first binds to its GPU (cuda:LOCAL_RANK), so nccl and `torch.cuda.current_device()` agree on it.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return world()
    if not dist.is_initialized():
        where = resolve_device(device)
        if where.type == "cuda":
            torch.cuda.set_device(where)
        dist.init_process_group(backend or default_backend(where))
    return world()


def _group_device() -> torch.device:
    """Where collective tensors must live: nccl only moves CUDA tensors (this rank's GPU), gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def is_main_process() -> bool:
    return world()[0] == 0


def barrier() -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written the files the others read next)."""
    if world()[1] > 1:
        dist.barrier()


def broadcast_module(model: nn.Module, src: int = 0) -> nn.Module:
    """Copy rank `src`'s parameters and buffers to every rank (all start from the same weights)."""
    if world()[1] > 1:
        where = _group_device()
        with torch.no_grad():
            for t in model.state_dict().values():
                buf = t.to(where)
                dist.broadcast(buf, src)
                if buf is not t:
                    t.copy_(buf)
    return model


def mean_over_ranks(value: float) -> float:
    """The average of a per-rank number (e.g. the epoch loss over each rank's shard)."""
    if world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_group_device())
    dist.all_reduce(t)
    return float(t) / world()[1]


def shard(items: Sequence, rank: int | None = None, size: int | None = None) -> list:
    """This rank's round-robin share of `items` (items[rank::size]), e.g. the layers of a sensitivity sweep."""
    r, w = world()
    return list(items)[(r if rank is None else rank)::(w if size is None else size)]


def gather_json(part: dict) -> dict:
    """Merge every rank's JSON-serializable dict on all ranks (sent as UTF-8 bytes, never pickled)."""
    _, size = world()
    if size == 1:
        return dict(part)
    where = _group_device()
    data = torch.tensor(list(json.dumps(part).encode()), dtype=torch.uint8, device=where)
    sizes = [torch.zeros(1, dtype=torch.int64, device=where) for _ in range(size)]
    dist.all_gather(sizes, torch.tensor([data.numel()], device=where))
    longest = int(max(int(n) for n in sizes))
    chunks = [torch.zeros(longest, dtype=torch.uint8, device=where) for _ in range(size)]
    dist.all_gather(chunks, torch.cat([data, torch.zeros(longest - data.numel(), dtype=torch.uint8, device=where)]))
    merged: dict = {}
    for chunk, n in zip(chunks, sizes):
        merged.update(json.loads(bytes(chunk[: int(n)].cpu().tolist()).decode()))
    return merged
