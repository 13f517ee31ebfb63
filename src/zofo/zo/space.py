"""The parameters a zeroth-order method moves, and the Gaussian directions over them.

A direction u ~ N(0, I) is never stored: it is regenerated from a seed wherever it is needed. Its value
at one element depends only on (seed, the parameter's name, the element's index in that parameter), so
it does not change with how parameters are packed, grouped by dtype, selected for weight decay or spread
over devices, and a slice of a parameter (a shard) can draw exactly its part of u.

Parameters are packed into a few flat buckets per dtype (their `.data` re-pointed to views of one
contiguous tensor), so that a pass over θ is a few large kernels instead of one per tensor; `unpack()`
gives every parameter its own storage back (safetensors refuses shared storage).

θ can be *displaced*: SPSA leaves it at θ + scale·u(seed) after its last evaluation, recorded in
`displacement`, and the optimizer's next step removes it in the same pass as its update (or `restore()`
does, alone). Anything that needs θ itself (evaluation, saving) checks that nothing is displaced.

With `keep_origin` the space holds a copy of θ (the *origin*): a displaced θ is written as origin +
scale·u in one rounding, and restoring it is a copy, so no round-off accumulates in any dtype (θ + εu −
2εu + εu does not round back to θ in bf16). The optimizer's step writes the new θ from the origin and
the origin with it (`commit`), in the same pass. Cost: the memory of θ once more; a pass reads the
origin where it read θ and, at the update, writes both.

θ sharded over processes (FSDP2's DTensor parameters, one dim-0 slice per rank): each rank's space holds
its local slices, each a segment whose `start` is the slice's first element in the whole parameter, so the
directions, the perturbed weights and the updates are those of the unsharded θ, element for element.

Two generators, named in `directions` (a trajectory replays only under the one that wrote it):
- triton: the fused kernel (kernels.py), Philox4x32 addressed by (seed; element counter, name hash), on a GPU;
- torch: torch.Generator, one seeded stream per block of TORCH_BLOCK elements of a parameter, keyed by
  mix(seed, name hash, block index). Its numbers depend on the device type's generator.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

MASK64 = (1 << 63) - 1
ALIGN = 16  # elements: packed parameters start at multiples of it, so that the fused kernel's accesses vectorise
KERNELS = ("auto", "torch", "triton")
TORCH_BLOCK = 1 << 20
FORMAT = "u(seed, parameter name, element index)"


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


def _kernels():
    """The Triton kernels, imported on first use (the torch path runs without Triton installed)."""
    from . import kernels

    return kernels


def aligned(numel: int) -> int:
    return -(-numel // ALIGN) * ALIGN


def is_sharded(parameter: torch.Tensor) -> bool:
    """A DTensor parameter (FSDP2's fully_shard): this process holds a slice of it."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(parameter, DTensor)


def shard_start(parameter) -> int:
    """The flat index, in the whole parameter, of this process's first element of a dim-0 shard."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if any(not isinstance(p, Shard) or p.dim != 0 for p in parameter.placements):
        raise ValueError(f"a sharded parameter must be split along dim 0 (FSDP2's default), got {parameter.placements}")
    _, offset = compute_local_shape_and_global_offset(parameter.shape, parameter.device_mesh, parameter.placements)
    return offset[0] * (parameter.numel() // parameter.shape[0] if parameter.shape[0] else 0)


def name_key(name: str) -> int:
    """A parameter's 64-bit key: the same in every process (Python's hash() is not)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


@dataclass
class Segment:
    """One parameter (or a slice of it) inside a bucket."""

    name: str  # the key of its directions: the name in the plain model's state dict
    parameter: torch.nn.Parameter
    bucket: int
    offset: int  # position of its first element in the bucket
    numel: int
    extent: int = 0  # elements a pass may write from offset: numel, or up to the next aligned offset when packed
    start: int = 0  # index of its first element within the whole parameter (nonzero for a shard)
    parameter_numel: int | None = None  # elements of the whole parameter (default: numel)
    key: int = field(init=False)

    def __post_init__(self):
        self.key = name_key(self.name)
        self.extent = max(self.extent, self.numel)
        if self.parameter_numel is None:
            self.parameter_numel = self.start + self.numel


@dataclass
class Bucket:
    flat: torch.Tensor  # 1-D; the parameters are views into it (or it is a view of the one parameter)
    segments: list[Segment]


class ParameterSpace:
    """θ as flat buckets of named parameters, with seeded Gaussian directions addressed by position."""

    def __init__(self, named_parameters, pack: bool = True, bucket_numel: int = 1 << 27, kernel: str = "auto",
                 keep_origin: bool = False):
        named = [(n, p) for n, p in named_parameters]
        if not named:
            raise ValueError("a zeroth-order method needs at least one parameter to perturb")
        if len({n for n, _ in named}) != len(named):
            raise ValueError("parameter names must be unique: they key the random directions")
        devices = {p.device for _, p in named}
        if len(devices) != 1:
            raise ValueError(f"all perturbed parameters must be on one device, found {sorted(map(str, devices))}")
        self.device = devices.pop()
        self.total_numel = sum(p.numel() for _, p in named)  # of the whole θ, sharded or not
        self.sharded = any(is_sharded(p) for _, p in named)
        self.buckets: list[Bucket] = []
        if self.sharded:  # FSDP2 owns the shards' storage: each local slice is a bucket of its own
            self._add_shards(named)
        elif pack:
            self._pack(named, bucket_numel)
        else:
            for name, p in named:
                self._add_bucket(p.data.view(-1), [(name, p)])
        self.numel = sum(b.flat.numel() for b in self.buckets)  # the elements this process holds and moves
        self.kernel = resolve_kernel(kernel, self.device)
        self.keep_origin = keep_origin
        self.origins = [b.flat.clone() for b in self.buckets] if keep_origin else None  # θ without displacement
        self.displacement: tuple[int, float] | None = None  # θ currently is θ + scale·u(seed)
        self._generator = torch.Generator(device=self.device)
        self._launches: dict[tuple, object] = {}  # Triton launch tables, built on first use

    @property
    def directions(self) -> str:
        """What decides u for a seed; a trajectory replays only under the same generator."""
        if self.kernel == "triton":
            kernels = _kernels()
            box_muller = "approximate" if kernels.FAST_MATH else "exact"
            rng = f"triton Philox4x32-{kernels.ROUNDS}, {box_muller} Box-Muller, groups of {kernels.GROUP}"
        else:
            rng = f"torch {self.device.type} generator, blocks of {TORCH_BLOCK}"
        return f"{FORMAT} from {rng}; {self.total_numel} parameters"

    @property
    def segments(self) -> list[Segment]:
        return [s for b in self.buckets for s in b.segments]

    def _add_bucket(self, flat: torch.Tensor, members, packed: bool = False) -> None:
        b, offset, segments = len(self.buckets), 0, []
        for name, p in members:
            extent = aligned(p.numel()) if packed else p.numel()
            segments.append(Segment(name, p, b, offset, p.numel(), extent))
            offset += extent
        self.buckets.append(Bucket(flat, segments))

    def _add_shards(self, named) -> None:
        """One bucket per local slice of a sharded parameter (dim 0, as FSDP2 shards), whose segment starts at
        the slice's first element in the whole parameter; ranks whose slice is empty skip it."""
        for name, p in named:
            local, start = (p.to_local().detach(), shard_start(p)) if is_sharded(p) else (p.data, 0)
            if local.numel() == 0:
                continue
            b = len(self.buckets)
            segment = Segment(name, p, b, 0, local.numel(), start=start, parameter_numel=p.numel())
            self.buckets.append(Bucket(local.view(-1), [segment]))

    def _pack(self, named, bucket_numel: int) -> None:
        groups: dict[torch.dtype, list] = {}
        for name, p in named:
            groups.setdefault(p.dtype, []).append((name, p))
        for members in groups.values():
            while members:
                size, take = 0, 0
                while take < len(members) and (take == 0 or size + aligned(members[take][1].numel()) <= bucket_numel):
                    size += aligned(members[take][1].numel())
                    take += 1
                batch, members = members[:take], members[take:]
                flat = torch.zeros(size, dtype=batch[0][1].dtype, device=self.device)
                offset = 0
                for _, p in batch:
                    n = p.numel()
                    flat[offset : offset + n].copy_(p.data.view(-1))
                    p.data = flat[offset : offset + n].view_as(p)  # the old storage is freed here
                    offset += aligned(n)
                self._add_bucket(flat, batch, packed=True)

    def unpack(self) -> None:
        """Give each parameter its own storage again (safetensors refuses tensors that share one)."""
        self.check_restored("unpack")
        if self.sharded:  # never packed: FSDP2 owns the storage
            return
        members = [(s.name, s.parameter) for s in self.segments]
        for _, p in members:
            p.data = p.data.clone()
        self.buckets, self._launches = [], {}
        for name, p in members:
            self._add_bucket(p.data.view(-1), [(name, p)])
        if self.keep_origin:
            self.origins = [b.flat.clone() for b in self.buckets]

    def view(self, segment: Segment) -> torch.Tensor:
        return self.buckets[segment.bucket].flat[segment.offset : segment.offset + segment.numel]

    # --- directions ----------------------------------------------------------------------------

    def direction(self, seed: int, segment: Segment, start: int = 0, numel: int | None = None) -> torch.Tensor:
        """u(seed) over elements [start, start + numel) of a segment, in fp32 (regenerated, never stored)."""
        numel = segment.numel - start if numel is None else numel
        first = segment.start + start  # index within the whole parameter
        if self.kernel == "triton":
            launch = self._launch(("slice", segment.name, first, numel), [(0, segment.key, first, aligned(numel))])
            u = torch.empty(aligned(numel), dtype=torch.float32, device=self.device)
            return _kernels().gaussian_(u, launch, seed)[:numel]
        return torch.cat(list(self._torch_blocks(seed, segment, first, numel)))

    def _torch_blocks(self, seed: int, segment: Segment, first: int, numel: int):
        """Pieces of u for parameter elements [first, first + numel): each block of TORCH_BLOCK elements
        is drawn whole from its own seed, so a slice equals the same slice of the whole."""
        for block in range(first // TORCH_BLOCK, (first + numel - 1) // TORCH_BLOCK + 1):
            begin = block * TORCH_BLOCK
            length = min(TORCH_BLOCK, segment.parameter_numel - begin)
            self._generator.manual_seed(mix(seed, segment.key, block))
            u = torch.randn(length, generator=self._generator, device=self.device, dtype=torch.float32)
            yield u[max(first, begin) - begin : min(first + numel, begin + length) - begin]

    def _launch(self, key: tuple, pieces):
        if key not in self._launches:
            self._launches[key] = _kernels().Launch.of(pieces, self.device)
        return self._launches[key]

    def _bucket_launch(self, b: int):
        """One launch over every segment of bucket b."""
        return self._launch(("bucket", b), [(s.offset, s.key, s.start, s.extent) for s in self.buckets[b].segments])

    def add_to_segment(self, seed: int, segment: Segment, scale: float) -> None:
        """θ[segment] += scale·u(seed)."""
        view = self.view(segment)
        if self.kernel == "triton":
            launch = self._launch(("segment", segment.name, segment.bucket, segment.offset),
                                  [(segment.offset, segment.key, segment.start, segment.extent)])
            _kernels().add_gaussian_(self.buckets[segment.bucket].flat, launch, seed, scale)
            return
        done = 0
        for u in self._torch_blocks(seed, segment, segment.start, segment.numel):
            view[done : done + u.numel()].add_(u, alpha=scale)
            done += u.numel()

    def add_direction(self, seed: int, scale: float) -> None:
        """θ ← θ + scale·u(seed), in place: one pass over θ (one kernel per bucket with Triton)."""
        if self.kernel != "triton":
            for segment in self.segments:
                self.add_to_segment(seed, segment, scale)
            return
        for b, bucket in enumerate(self.buckets):
            _kernels().add_gaussian_(bucket.flat, self._bucket_launch(b), seed, scale)

    def set_from_origin(self, seed: int, scale: float, commit: bool = False) -> None:
        """θ ← origin + scale·u(seed), one rounding per element; with commit the origin takes the new θ too."""
        if self.kernel == "triton":
            for b, bucket in enumerate(self.buckets):
                _kernels().add_gaussian_from_(bucket.flat, self.origins[b], self._bucket_launch(b), seed, scale, commit)
            return
        for segment in self.segments:
            view = self.view(segment)
            origin = self.origins[segment.bucket][segment.offset : segment.offset + segment.numel]
            done = 0
            for u in self._torch_blocks(seed, segment, segment.start, segment.numel):
                part = slice(done, done + u.numel())
                view[part] = (origin[part].to(torch.float32) + scale * u).to(view.dtype)
                done += u.numel()
            if commit:
                origin.copy_(view)

    def commit(self) -> None:
        """The current θ becomes the origin (after an update written into θ itself)."""
        if self.origins is not None:
            for bucket, origin in zip(self.buckets, self.origins):
                origin.copy_(bucket.flat)

    # --- displacement ----------------------------------------------------------------------------

    def displace(self, seed: int, scale: float) -> None:
        """θ ← θ + scale·u(seed), remembered until restore() or an optimizer step takes it back."""
        if self.displacement is not None and self.displacement[0] != seed:
            raise RuntimeError("θ is displaced along another direction: restore() it first")
        total = scale + (self.displacement[1] if self.displacement else 0.0)
        if self.origins is not None:
            self.set_from_origin(seed, total)
        else:
            self.add_direction(seed, scale)
        self.displacement = (seed, total)

    def restore(self) -> None:
        """Take back the displacement alone (an optimizer step does it fused with its update)."""
        if self.displacement is not None:
            seed, scale = self.displacement
            if self.origins is not None:
                for bucket, origin in zip(self.buckets, self.origins):
                    bucket.flat.copy_(origin)
            else:
                self.add_direction(seed, -scale)
            self.displacement = None

    def check_restored(self, what: str) -> None:
        if self.displacement is not None:
            raise RuntimeError(f"cannot {what} while θ is displaced by an unfinished SPSA estimate: take an "
                               "optimizer step or call restore() first")

    @contextmanager
    def perturbed_on_the_fly(self, model: torch.nn.Module, seed: int, scale: float):
        """Evaluate the model at θ + scale·u(seed) without changing θ.

        Each module's own parameters are perturbed just before its forward and copied back right
        after it, so the stored weights never carry a perturbation and no round-off accumulates.
        Extra memory: one module's weights. Needs an unpacked space (pack=False).
        """
        if any(len(b.segments) > 1 for b in self.buckets):
            raise ValueError("on-the-fly perturbation needs ParameterSpace(..., pack=False)")
        segment_of = {id(b.segments[0].parameter): b.segments[0] for b in self.buckets}
        handles, hooked = [], set()
        for module in model.modules():
            own = [segment_of[id(p)] for p in module._parameters.values() if p is not None and id(p) in segment_of]
            if not own:
                continue
            hooked.update(s.name for s in own)
            saved: list[torch.Tensor] = []

            def perturb(_module, _args, own=own, saved=saved):
                for segment in own:
                    saved.append(self.view(segment).clone())
                    self.add_to_segment(seed, segment, scale)

            def restore(_module, _args, _output, own=own, saved=saved):
                for segment, original in zip(own, saved):
                    self.view(segment).copy_(original)
                saved.clear()

            handles += [module.register_forward_pre_hook(perturb), module.register_forward_hook(restore)]
        if len(hooked) != len(self.buckets):
            raise ValueError("some perturbed parameters belong to no module of the model")
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def origin_bytes(self) -> int:
        return sum(o.numel() * o.element_size() for o in self.origins) if self.origins is not None else 0

    def state_bytes(self, copies: int = 1, dtype=torch.float32) -> int:
        """Bytes of `copies` optimizer-state tensors the size of θ."""
        return copies * self.numel * torch.empty((), dtype=dtype).element_size()
