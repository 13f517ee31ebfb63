"""Data parallelism over processes launched by torchrun: rank and world, the process group, minibatch shards,
and the few collectives a run needs. On one process every function here is a no-op.

    torchrun --nproc-per-node N -m zofo train ...       # one process per rank; gloo on the CPU, nccl on CUDA

Every rank holds the whole model and draws the same minibatch indices from the seed; each keeps its own
contiguous slice of them (`shard`). What crosses between ranks per step:
    a zeroth-order step   the losses at θ ± εu (a few floats), averaged weighted by each rank's share of the
                          loss's denominator (its examples, or its answer tokens for the LM loss: the minibatch's
                          mean, as on one process), part by part for an objective over several minibatches
                          (Bilevel's B_FT and B_P, meta-training's tasks), so every rank applies the same seeded
                          update: no weights, no gradients
    a first-order step    the adapter's gradients (and the logged loss), in one all-reduce after each backward
                          pass, averaged the same way
    evaluation            the validation loss's sums; the test predictions, gathered in the examples' order
Every `weight_check_every` steps the ranks compare a checksum of each tensor of their weights.
Only rank 0 writes the run folder and prints; the other ranks read what it wrote (the trajectory, on resume).

With sharded weights (`--shard-weights`, `shard_weights`) θ is split over the ranks by FSDP2's `fully_shard`,
one unit per decoder layer: a forward gathers one layer's weights at a time, and each rank perturbs and
updates its own slice with the directions of the unsharded θ (ParameterSpace keys u by global index). Every
forward is then a collective, so evaluation is not split: each rank scores every example.
"""

from __future__ import annotations

import datetime
import gc
import os
from typing import Any, Callable

import torch
import torch.distributed as dist

from .errors import ConfigError, RanksDiverged, RankLost
from .zo.space import is_sharded


_weights_sharded = False  # set by shard_weights(): θ is split over the ranks


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launched_processes() -> int:
    """The processes torchrun started (its WORLD_SIZE), readable before the process group is set up."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_size() -> int:
    """Processes in the run's process group; 1 without one (one process, or a command that sets none up)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def active() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """Rank 0: the process that writes the run folder, prints and shows progress."""
    return rank() == 0


def print_main(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def check_launch(config) -> None:
    """What a data-parallel run needs, checked before anything loads: a torchrun launch for sharded weights, a
    batch size that splits evenly over the ranks, one GPU per rank."""
    n = launched_processes()
    if config.shard_weights and not launched_by_torchrun():
        raise ConfigError("--shard-weights splits the weights over the processes of a torchrun launch: "
                          "torchrun --nproc-per-node N -m zofo train ... (or drop --shard-weights)")
    if n == 1:
        return
    if config.batch_size % n:
        raise ConfigError(f"--batch-size {config.batch_size} does not split over {n} processes: each rank takes an "
                          f"equal shard of every minibatch, so choose a multiple of {n}")
    if config.device.startswith("cuda:"):
        raise ConfigError(f"--device {config.device}: on several processes each rank takes the GPU of its local "
                          "rank; use --device cuda (or auto)")


def setup(device: torch.device, timeout_seconds: float, always: bool = False) -> torch.device:
    """The process group from torchrun's environment (nccl for CUDA, gloo otherwise) and this rank's device
    (cuda:LOCAL_RANK); on one process, `device` unchanged and no process group (unless `always`: sharded
    weights need one, even of one process under torchrun)."""
    if launched_processes() == 1 and not (always and launched_by_torchrun()):
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_seconds))
    return device


def teardown() -> None:
    """Destroy the process group, after freeing the garbage that may still use it. A model sharded by FSDP2 sits
    in reference cycles, so it outlives its last name until the cycle collector runs; left to the interpreter's
    exit, it was freed after the group was gone and the process aborted now and then ("terminate called without
    an active exception")."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def _collective(what: str, call: Callable[[], Any]) -> Any:
    """Run a collective; a rank that died or hung past the timeout is an error that says what to do."""
    try:
        return call()
    except (RuntimeError, dist.DistError) as error:
        detail = str(error).splitlines()[0][:300]
        raise RankLost(f"rank {rank()} of {world_size()} lost the other ranks while {what} ({detail}). Another rank "
                       "stopped or hung (its own error, if any, is above). The run folder keeps its last checkpoint: "
                       "launch the same command with --resume") from None


# --- shards ----------------------------------------------------------------------------------------


def shard(items: list) -> list:
    """This rank's contiguous slice of `items` (all ranks hold the same list): sizes differ by at most one,
    and the slices in rank order are the list again."""
    n, r, size = len(items), rank(), world_size()
    return items[r * n // size: (r + 1) * n // size]


def gather(items: list) -> list:
    """Every rank's list, concatenated in rank order (the inverse of `shard`)."""
    if not active():
        return items
    gathered: list = [None] * world_size()
    _collective("gathering predictions", lambda: dist.all_gather_object(gathered, items))
    return [item for part in gathered for item in part]


def from_main(call: Callable[[], Any]) -> Any:
    """`call()` on rank 0 alone, its result (or the error it raised) handed to every rank: one writer of the
    run folder, and a refusal there stops every rank with the same message."""
    if not active():
        return call()
    message: list = [None]
    if is_main():
        try:
            message[0] = ("result", call())
        except Exception as error:  # handed on first, raised below on every rank
            message[0] = ("error", error)
    _collective("receiving rank 0's run folder", lambda: dist.broadcast_object_list(message, src=0))
    kind, value = message[0]
    if kind == "error":
        raise value
    return value


# --- sharded weights ---------------------------------------------------------------------------------


def shard_weights(model: torch.nn.Module, device: torch.device) -> None:
    """Split the model's weights over the ranks with FSDP2: each block the model names unsplittable (its
    decoder layers, `_no_split_modules`) is a `fully_shard` unit, then the root (embeddings, tied head)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    global _weights_sharded
    mesh = init_device_mesh(device.type, (world_size(),))
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    # FSDP2 keeps the root's weights gathered after a forward (a backward would follow); a zeroth-order step
    # changes the shards between forwards, so the root lets go of its gathered copy after each one
    model.register_forward_hook(lambda module, args, output: module.reshard())
    _weights_sharded = True


def full_state_dict(model: torch.nn.Module) -> dict:
    """The whole weights, gathered from every rank's shard (a collective: every rank calls it), on rank 0's
    CPU; an empty dict on the other ranks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return _collective("gathering the sharded weights", lambda: get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))


def splits_evaluation() -> bool:
    """Evaluation is split over the ranks, except with sharded weights: every forward is then a collective
    that all ranks must call equally often, so each scores every example."""
    return active() and not _weights_sharded


def evaluation_shard(items: list) -> list:
    return shard(items) if splits_evaluation() else items


def evaluation_gather(items: list) -> list:
    return gather(items) if splits_evaluation() else items


def evaluation_sums(values: torch.Tensor) -> torch.Tensor:
    return sums(values) if splits_evaluation() else values


# --- reductions ------------------------------------------------------------------------------------


def weighted_mean(values: torch.Tensor, weight) -> torch.Tensor:
    """The mean over ranks of `values` (each rank's mean losses on its shard), weighted by `weight`, the
    denominator of this rank's means (TaskData.loss_weight): the means over the whole minibatch. `weight`
    is one number, or one per part when the last dimension of `values` holds parts of an objective taken
    over different minibatches (Bilevel's B_FT and B_P, meta-training's tasks). One all-reduce."""
    if not active():
        return values
    weights = torch.as_tensor(weight, dtype=torch.float32, device=values.device).expand(values.shape[-1:])
    packed = torch.cat([(values.to(torch.float32) * weights).reshape(-1), weights])
    _collective("all-reducing losses", lambda: dist.all_reduce(packed))
    return packed[:values.numel()].view(values.shape) / packed[values.numel():]


def sums(values: torch.Tensor) -> torch.Tensor:
    """`values` summed over ranks (the validation loss's numerator and denominator)."""
    if not active():
        return values
    values = values.clone()
    _collective("all-reducing the validation loss", lambda: dist.all_reduce(values))
    return values


def average_gradients(optimizer: torch.optim.Optimizer, loss: torch.Tensor, weight: float) -> torch.Tensor:
    """The gradients of the optimizer's parameters (an adapter's) and the `loss` logged with them, averaged
    over ranks weighted by `weight` (as in weighted_mean), in one all-reduce: each rank's .grad is the gradient
    of its shard's mean loss, so the average is the gradient of the whole minibatch's mean loss, as on one
    process. Where gradients of several minibatches accumulate (B_FT then B_P; several tasks), call it after
    each backward with that minibatch's weight: what was averaged before is the same on every rank, and any
    weighted mean leaves it as it is."""
    if not active():
        return loss
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    device = grads[0].device if grads else loss.device
    packed = torch.cat([g.reshape(-1).to(torch.float32) for g in grads]
                       + [loss.to(device, torch.float32).reshape(1), torch.ones(1, device=device)]) * weight
    _collective("all-reducing adapter gradients", lambda: dist.all_reduce(packed))
    packed = packed / packed[-1]
    offset = 0
    for grad in grads:  # in place: a captured backward keeps writing into these tensors
        grad.copy_(packed[offset: offset + grad.numel()].view_as(grad))
        offset += grad.numel()
    return packed[offset]


# --- the ranks hold the same weights ---------------------------------------------------------------


@torch.no_grad()
def checksum(tensor: torch.Tensor, block: int = 1 << 22) -> torch.Tensor:
    """Two int64 sums of the tensor's bit patterns, plain and weighted by position (integer sums wrap and do
    not depend on order): any change to one element changes the first, a swap of two the second."""
    bits = tensor.detach().reshape(-1)
    bits = bits.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[bits.element_size()])
    total = torch.zeros(2, dtype=torch.int64, device=bits.device)
    for start in range(0, bits.numel(), block):
        part = bits[start: start + block].to(torch.int64)
        position = torch.arange(start, start + part.numel(), device=bits.device) % 65521 + 1
        total[0] += part.sum()
        total[1] += (part * position).sum()
    return total


def check_same_weights(model: torch.nn.Module, step: int) -> None:
    """Every rank's weights are bit-identical (their steps are meant to be); if not, an error naming the first
    tensor that differs and the ranks that disagree with rank 0."""
    if not active():
        return
    # a sharded weight differs between ranks by design: its slices are moved by the same seeded steps
    named = [(name, p) for name, p in model.named_parameters() if not is_sharded(p)]
    if not named:  # every weight sharded: nothing the ranks should hold alike
        return
    local = torch.stack([checksum(p) for _, p in named])
    everyone = [torch.empty_like(local) for _ in range(world_size())]
    _collective("comparing weights", lambda: dist.all_gather(everyone, local))
    for index, (name, _) in enumerate(named):
        differ = [r for r in range(1, world_size()) if not torch.equal(everyone[r][index], everyone[0][index])]
        if differ:
            raise RanksDiverged(f"after step {step} the ranks hold different weights: first {name!r}, where rank(s) "
                                f"{', '.join(map(str, differ))} differ from rank 0. Their steps should be identical; "
                                "launch every rank with the same code, config and library versions")
