"""Optimizers that consume a zeroth-order Estimate (seeds and scalars) instead of a gradient tensor.

Each step makes one pass over θ, chunk by chunk: it regenerates the directions u_i, adds back the
perturbation the estimator left pending (the restore, fused into the update), and applies the rule
to the direction d = (1/q) Σ g_i u_i. No tensor the size of θ is ever built for d.

    ZO-SGD       θ ← θ − lr·(d + wd·θ)                         state: none (momentum: one fp32 copy of θ)
    ZO-sign-SGD  θ ← θ − lr·(sign(d) + wd·θ)                   state: none
    ZO-Adam      m ← β1·m + (1−β1)·d,  v ← β2·v + (1−β2)·d²     state: two fp32 copies of θ (8 bytes/param)
                 θ ← θ − lr·(m̂ / (√v̂ + ε_adam) + wd·θ)
Weight decay skips biases and normalisation weights.
"""

from __future__ import annotations

import math

import torch

from .space import ParameterSpace
from .spsa import Estimate

ZO_OPTIMIZERS = ("zo-sgd", "zo-sign-sgd", "zo-adam")


class ZOOptimizer:
    state_names: tuple[str, ...] = ()

    def __init__(self, space: ParameterSpace, lr: float, weight_decay: float = 0.0):
        self.space, self.lr, self.weight_decay = space, lr, weight_decay
        self.steps = 0
        self.state = {name: [torch.zeros_like(b.flat, dtype=torch.float32) for b in space.buckets]
                      for name in self.state_names}

    def state_bytes(self) -> int:
        return self.space.state_bytes(len(self.state_names))

    def _decay(self, bucket: int) -> float:
        return 1.0 - self.lr * self.weight_decay if self.weight_decay and self.space.buckets[bucket].decayed else 1.0

    @torch.no_grad()
    def step(self, estimate: Estimate) -> None:
        """Generic one-pass step: restore the pending perturbation, form d chunk by chunk, update."""
        self.steps += 1
        q, space = len(estimate.seeds), self.space
        for b, c, view in space.chunks():
            start = c * space.chunk_numel
            direction = torch.zeros(view.numel(), dtype=torch.float32, device=view.device)
            for seed, scalar in zip(estimate.seeds, estimate.scalars):
                u = space.direction(seed, b, c, view.numel())
                if seed == estimate.pending_seed:
                    view.add_(u, alpha=estimate.pending_scale)
                direction.add_(u, alpha=scalar / q)
            decay = self._decay(b)
            if decay != 1.0:
                view.mul_(decay)
            view.add_(self.update(direction, b, slice(start, start + view.numel())).to(view.dtype), alpha=-self.lr)

    def update(self, direction: torch.Tensor, bucket: int, part: slice) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"steps": self.steps, **{name: [t.cpu() for t in tensors] for name, tensors in self.state.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        for name in self.state_names:
            for target, saved in zip(self.state[name], state[name]):
                target.copy_(saved)


class ZOSGD(ZOOptimizer):
    def __init__(self, space: ParameterSpace, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.momentum = momentum
        self.state_names = ("momentum",) if momentum else ()
        super().__init__(space, lr, weight_decay)

    @torch.no_grad()
    def step(self, estimate: Estimate) -> None:
        if self.momentum:
            return super().step(estimate)
        # Plain ZO-SGD: restore and update are one axpy per direction: θ ← decay·θ + (decay·pending − lr·g/q)·u.
        self.steps += 1
        q, space = len(estimate.seeds), self.space
        for b, c, view in space.chunks():
            decay = self._decay(b)
            if decay != 1.0:
                view.mul_(decay)
            for seed, scalar in zip(estimate.seeds, estimate.scalars):
                scale = -self.lr * scalar / q
                if seed == estimate.pending_seed:
                    scale += decay * estimate.pending_scale
                if scale != 0.0:  # lr 0 and nothing pending: leave θ untouched
                    space.add_to_chunk(seed, b, c, view, scale)

    def update(self, direction, bucket, part):
        buffer = self.state["momentum"][bucket][part]
        return buffer.mul_(self.momentum).add_(direction)


class ZOSignSGD(ZOOptimizer):
    def update(self, direction, bucket, part):
        return direction.sign_()


class ZOAdam(ZOOptimizer):
    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, space: ParameterSpace, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(space, lr, weight_decay)
        self.betas, self.eps = betas, eps

    def update(self, direction, bucket, part):
        beta1, beta2 = self.betas
        m = self.state["exp_avg"][bucket][part].mul_(beta1).add_(direction, alpha=1 - beta1)
        v = self.state["exp_avg_sq"][bucket][part].mul_(beta2).addcmul_(direction, direction, value=1 - beta2)
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
