"""Optimizers that consume a zeroth-order Estimate (seeds and scalars) instead of a gradient tensor.

Each step makes one pass over θ: it regenerates the directions u_i, takes back the displacement SPSA
left on θ (space.displacement, fused into the update) and applies the rule to the direction
d = (1/q) Σ g_i u_i. No tensor the size of θ is ever built for d.

    ZO-SGD       θ ← θ − lr·(d + wd·θ)                         state: none (momentum: one fp32 copy of θ)
    ZO-sign-SGD  θ ← θ − lr·(sign(d) + wd·θ)                   state: none
    ZO-Adam      m ← β1·m + (1−β1)·d,  v ← β2·v + (1−β2)·d²     state: two fp32 copies of θ (8 bytes/param)
                 θ ← θ − lr·(m̂ / (√v̂ + ε_adam) + wd·θ)
Weight decay applies to the parameters `decays(name, parameter)` selects (default: MeZO's rule, which
skips biases and normalisation weights); the mask is the optimizer's, so it never changes u.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .space import ParameterSpace, Segment
from .spsa import Estimate

ZO_OPTIMIZERS = ("zo-sgd", "zo-sign-sgd", "zo-adam")
CHUNK = 1 << 24  # elements of u materialised at once by the optimizers that need u itself


def is_decayed(name: str, parameter: torch.Tensor) -> bool:
    """MeZO's weight-decay rule: matrices only, no biases or normalisation weights (by name and shape)."""
    lowered = name.lower()
    return parameter.ndim >= 2 and "bias" not in lowered and "norm" not in lowered and ".ln" not in lowered


class ZOOptimizer:
    state_names: tuple[str, ...] = ()

    def __init__(self, space: ParameterSpace, lr: float, weight_decay: float = 0.0,
                 decays: Callable[[str, torch.Tensor], bool] = is_decayed):
        self.space, self.lr, self.weight_decay = space, lr, weight_decay
        self.decayed = {s.name for s in space.segments if decays(s.name, s.parameter)}
        self.steps = 0
        self.state = {name: {s.name: torch.zeros(s.numel, dtype=torch.float32, device=space.device)
                             for s in space.segments} for name in self.state_names}

    def state_bytes(self) -> int:
        return self.space.state_bytes(len(self.state_names))

    def _decay(self, segment: Segment) -> float:
        return 1.0 - self.lr * self.weight_decay if self.weight_decay and segment.name in self.decayed else 1.0

    def _take_back(self, estimate: Estimate) -> dict[int, float]:
        """Per seed of the estimate, the scale of u that takes θ's displacement back (with an origin kept,
        θ is copied back from it instead, and nothing is left pending)."""
        pending = {}
        self._check_displacement(estimate)
        if self.space.displacement is not None:
            seed, scale = self.space.displacement
            if self.space.origins is not None:
                self.space.restore()
                return pending
            pending[seed] = -scale
            self.space.displacement = None  # taken back by this step's pass
        return pending

    def _take_back_by_update(self, estimate: Estimate) -> None:
        """The update about to be written from the origin takes the displacement back."""
        self._check_displacement(estimate)
        self.space.displacement = None

    def _check_displacement(self, estimate: Estimate) -> None:
        if self.space.displacement is not None and self.space.displacement[0] not in estimate.seeds:
            raise RuntimeError("θ is displaced along a direction that is not this estimate's")

    @torch.no_grad()
    def step(self, estimate: Estimate) -> None:
        """Generic one-pass step: per chunk, take back the displacement, form d, apply the rule."""
        self.steps += 1
        q, space, pending = len(estimate.seeds), self.space, self._take_back(estimate)
        for segment in space.segments:
            view = space.view(segment)
            for start in range(0, segment.numel, CHUNK):
                part = view[start : start + CHUNK]
                direction = torch.zeros(part.numel(), dtype=torch.float32, device=part.device)
                for seed, scalar in zip(estimate.seeds, estimate.scalars):
                    u = space.direction(seed, segment, start, part.numel())
                    if seed in pending:
                        part.add_(u, alpha=pending[seed])
                    direction.add_(u, alpha=scalar / q)
                decay = self._decay(segment)
                if decay != 1.0:
                    part.mul_(decay)
                update = self.update(direction, segment.name, slice(start, start + part.numel()))
                part.add_(update.to(part.dtype), alpha=-self.lr)
        space.commit()

    def update(self, direction: torch.Tensor, name: str, part: slice) -> torch.Tensor:
        raise NotImplementedError

    def first_update(self, direction: torch.Tensor) -> torch.Tensor:
        """The update the rule makes from fresh state (θ moves by −lr times it): d for SGD (momentum too)."""
        return direction

    def state_dict(self) -> dict:
        return {"steps": self.steps, **{k: {n: t.cpu() for n, t in v.items()} for k, v in self.state.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        for key in self.state_names:
            for name, tensor in self.state[key].items():
                tensor.copy_(state[key][name])


class ZOSGD(ZOOptimizer):
    def __init__(self, space: ParameterSpace, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 decays: Callable[[str, torch.Tensor], bool] = is_decayed):
        self.momentum = momentum
        self.state_names = ("momentum",) if momentum else ()
        super().__init__(space, lr, weight_decay, decays)

    @torch.no_grad()
    def step(self, estimate: Estimate) -> None:
        if self.momentum:
            return super().step(estimate)
        # Plain ZO-SGD: the take-back and the update are one axpy per direction,
        # θ ← θ + (take_back − lr·g/q)·u, over the whole space (one kernel per bucket).
        self.steps += 1
        space = self.space
        if space.origins is not None and len(estimate.seeds) == 1 and not self.weight_decay:
            # θ ← origin − lr·g·u and origin ← θ: the take-back and the update in one pass from the origin
            # (at lr 0, θ = origin exactly)
            self._take_back_by_update(estimate)
            space.set_from_origin(estimate.seeds[0], -self.lr * estimate.scalars[0], commit=True)
            return
        if self.weight_decay:  # the paper uses none: take back and decay first, one pass more
            self.space.restore()
            for segment in self.space.segments:
                if segment.name in self.decayed:
                    self.space.view(segment).mul_(1.0 - self.lr * self.weight_decay)
        q, pending = len(estimate.seeds), self._take_back(estimate)
        for seed, scalar in zip(estimate.seeds, estimate.scalars):
            scale = -self.lr * scalar / q + pending.get(seed, 0.0)
            if scale != 0.0:  # lr 0 and nothing pending: leave θ untouched
                self.space.add_direction(seed, scale)
        space.commit()

    def update(self, direction, name, part):
        buffer = self.state["momentum"][name][part]
        return buffer.mul_(self.momentum).add_(direction)


class ZOSignSGD(ZOOptimizer):
    def update(self, direction, name, part):
        return direction.sign_()

    def first_update(self, direction):
        return direction.sign()


class ZOAdam(ZOOptimizer):
    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, space: ParameterSpace, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decays: Callable[[str, torch.Tensor], bool] = is_decayed):
        super().__init__(space, lr, weight_decay, decays)
        self.betas, self.eps = betas, eps

    def first_update(self, direction):
        return direction / (direction.abs() + self.eps)  # m̂ / (√v̂ + ε) at step 1

    def update(self, direction, name, part):
        beta1, beta2 = self.betas
        m = self.state["exp_avg"][name][part].mul_(beta1).add_(direction, alpha=1 - beta1)
        v = self.state["exp_avg_sq"][name][part].mul_(beta2).addcmul_(direction, direction, value=1 - beta2)
        m_hat_scale = 1 / (1 - beta1 ** self.steps)
        v_hat_sqrt = v.sqrt().div_(math.sqrt(1 - beta2 ** self.steps)).add_(self.eps)
        return m.mul(m_hat_scale).div_(v_hat_sqrt)


def make_zo_optimizer(name: str, space: ParameterSpace, lr: float, momentum: float = 0.0,
                      weight_decay: float = 0.0) -> ZOOptimizer:
    if name == "zo-sgd":
        return ZOSGD(space, lr, momentum=momentum, weight_decay=weight_decay)
    if name == "zo-sign-sgd":
        return ZOSignSGD(space, lr, weight_decay=weight_decay)
    if name == "zo-adam":
        return ZOAdam(space, lr, weight_decay=weight_decay)
    raise ValueError(f"zo optimizer must be one of {ZO_OPTIMIZERS}, got {name!r}")
