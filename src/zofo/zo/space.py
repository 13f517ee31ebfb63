"""The parameters a zeroth-order method moves, and the Gaussian directions over them.

A direction u ~ N(0, I) is never stored: it is regenerated from a seed, chunk by chunk, into a
small scratch tensor. Parameters are packed into a few flat buckets (their `.data` re-pointed to
views of one contiguous tensor), so that a pass over θ is a few large kernels instead of two per
tensor; `unpack()` gives every parameter its own storage back (safetensors refuses shared storage).

Chunk k of bucket b under seed s is always drawn from a generator seeded with mix(s, b, k), so any
chunk can be regenerated alone, in any order. The numbers depend on the device's generator: a
trajectory replays bit-identically on the device type it was recorded on.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

MASK64 = (1 << 63) - 1
TRITON_SEED_MASK = (1 << 31) - 1
KERNELS = ("auto", "torch", "triton")


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """auto: the fused Triton kernel on a CUDA device when Triton is installed, else torch ops."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel != "auto":
        return kernel
    if device.type != "cuda":
        return "torch"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "torch"
    return "triton"


def mix(*numbers: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps): distinct inputs give unrelated streams."""
    state = 0x9E3779B97F4A7C15
    for n in numbers:
        state = (state ^ (n & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        state = (state ^ (state >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 31
    return state & MASK64


def is_decayed(name: str, parameter: torch.Tensor) -> bool:
    """Weight decay skips biases and normalisation weights (MeZO's rule, by name and by shape)."""
    lowered = name.lower()
    return parameter.ndim >= 2 and "bias" not in lowered and "norm" not in lowered and ".ln" not in lowered


@dataclass
class Bucket:
    flat: torch.Tensor  # 1-D; the parameters are views into it (or it is a view of the parameter)
    decayed: bool
    parameters: list[torch.nn.Parameter]


class ParameterSpace:
    """θ as a list of flat buckets, with seeded Gaussian directions over them."""

    def __init__(self, named_parameters, pack: bool = True, bucket_numel: int = 1 << 27,
                 chunk_numel: int | None = None, kernel: str = "auto"):
        named = [(n, p) for n, p in named_parameters]
        if not named:
            raise ValueError("a zeroth-order method needs at least one parameter to perturb")
        self.numel = sum(p.numel() for _, p in named)
        self.buckets: list[Bucket] = []
        if pack:
            self._pack(named, bucket_numel)
        else:
            for name, p in named:
                self.buckets.append(Bucket(p.data.view(-1), is_decayed(name, p), [p]))
        devices = {b.flat.device for b in self.buckets}
        if len(devices) != 1:
            raise ValueError(f"all perturbed parameters must be on one device, found {sorted(map(str, devices))}")
        self.device = devices.pop()
        self.kernel = resolve_kernel(kernel, self.device)
        # The fused kernel needs no scratch tensor, so it takes whole buckets; the torch path draws u
        # into a scratch chunk (64 MiB in fp32). The chunking is part of the random stream: replay
        # uses the same kernel and chunk size as training.
        self.chunk_numel = chunk_numel or (bucket_numel if self.kernel == "triton" else 1 << 24)
        self._generator = torch.Generator(device=self.device)

    @property
    def directions(self) -> str:
        """What decides the stream of u for a seed; a trajectory replays only under the same one."""
        if self.kernel == "triton":
            from . import kernels

            box_muller = "approximate" if kernels.FAST_MATH else "exact"
            rng = f"Philox4x32-{kernels.ROUNDS}, {box_muller} Box-Muller, block {kernels.BLOCK}"
        else:
            rng = f"torch {self.device.type} generator"
        return f"{self.kernel} ({rng}), chunks of {self.chunk_numel}, {self.numel} parameters in {len(self.buckets)} buckets"

    def _pack(self, named, bucket_numel: int) -> None:
        groups: dict[tuple, list] = {}
        for name, p in named:
            groups.setdefault((p.dtype, is_decayed(name, p)), []).append((name, p))
        for (dtype, decayed), members in groups.items():
            while members:
                size, take = 0, 0
                while take < len(members) and (take == 0 or size + members[take][1].numel() <= bucket_numel):
                    size += members[take][1].numel()
                    take += 1
                batch, members = members[:take], members[take:]
                flat = torch.empty(size, dtype=dtype, device=batch[0][1].device)
                offset = 0
                for _, p in batch:
                    n = p.numel()
                    flat[offset : offset + n].copy_(p.data.view(-1))
                    p.data = flat[offset : offset + n].view_as(p)  # the old storage is freed here
                    offset += n
                self.buckets.append(Bucket(flat, decayed, [p for _, p in batch]))

    def unpack(self) -> None:
        """Give each parameter its own storage again (safetensors refuses tensors that share one).
        Directions are then drawn per tensor: call only when no more steps follow (e.g. before saving)."""
        buckets = []
        for bucket in self.buckets:
            for p in bucket.parameters:
                p.data = p.data.clone()
                buckets.append(Bucket(p.data.view(-1), bucket.decayed, [p]))
        self.buckets = buckets

    # --- directions ----------------------------------------------------------------------------

    def chunks(self):
        """(bucket index, chunk index, view of θ) for every chunk of every bucket."""
        for b in range(len(self.buckets)):
            for c, view in self._bucket_chunks(b):
                yield b, c, view

    def _bucket_chunks(self, b: int):
        flat = self.buckets[b].flat
        for c, start in enumerate(range(0, flat.numel(), self.chunk_numel)):
            yield c, flat[start : start + self.chunk_numel]

    def direction(self, seed: int, bucket: int, chunk: int, numel: int) -> torch.Tensor:
        """u restricted to one chunk, in fp32 (regenerated, never stored)."""
        if self.kernel == "triton":
            from . import kernels

            return kernels.gaussian(numel, mix(seed, bucket, chunk) & TRITON_SEED_MASK, self.device)
        self._generator.manual_seed(mix(seed, bucket, chunk))
        return torch.randn(numel, generator=self._generator, device=self.device, dtype=torch.float32)

    def add_to_chunk(self, seed: int, bucket: int, chunk: int, view: torch.Tensor, scale: float) -> None:
        """view += scale·u for one chunk; fused into one kernel on a GPU with Triton."""
        if self.kernel == "triton":
            from . import kernels

            kernels.add_gaussian_(view, mix(seed, bucket, chunk) & TRITON_SEED_MASK, scale)
        else:
            view.add_(self.direction(seed, bucket, chunk, view.numel()), alpha=scale)

    def add_direction(self, seed: int, scale: float) -> None:
        """θ ← θ + scale·u(seed), in place: one pass over θ."""
        for b, c, view in self.chunks():
            self.add_to_chunk(seed, b, c, view, scale)

    def _add_to_bucket(self, seed: int, b: int, scale: float) -> None:
        for c, view in self._bucket_chunks(b):
            self.add_to_chunk(seed, b, c, view, scale)

    @contextmanager
    def perturbed_on_the_fly(self, model: torch.nn.Module, seed: int, scale: float):
        """Evaluate the model at θ + scale·u(seed) without changing θ.

        Each module's own parameters are perturbed just before its forward and copied back right
        after it, so the stored weights never carry a perturbation and no round-off accumulates.
        Extra memory: one module's weights. Needs an unpacked space (pack=False).
        """
        if any(len(b.parameters) > 1 for b in self.buckets):
            raise ValueError("on-the-fly perturbation needs ParameterSpace(..., pack=False)")
        bucket_of = {id(b.parameters[0]): i for i, b in enumerate(self.buckets)}
        handles, hooked = [], set()
        for module in model.modules():
            own = [bucket_of[id(p)] for p in module._parameters.values() if p is not None and id(p) in bucket_of]
            if not own:
                continue
            hooked.update(own)
            saved: list[torch.Tensor] = []

            def perturb(_module, _args, own=own, saved=saved):
                for b in own:
                    saved.append(self.buckets[b].flat.clone())
                    self._add_to_bucket(seed, b, scale)

            def restore(_module, _args, _output, own=own, saved=saved):
                for b, original in zip(own, saved):
                    self.buckets[b].flat.copy_(original)
                saved.clear()

            handles += [module.register_forward_pre_hook(perturb), module.register_forward_hook(restore)]
        if len(hooked) != len(self.buckets):
            raise ValueError("some perturbed parameters belong to no module of the model")
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def state_bytes(self, copies: int = 1, dtype=torch.float32) -> int:
        """Bytes of `copies` optimizer-state tensors the size of θ."""
        return copies * self.numel * torch.empty((), dtype=dtype).element_size()
