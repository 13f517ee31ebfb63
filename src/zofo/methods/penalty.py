"""Bilevel ZOFO's upper-level objective, shared by the single-task and the multi-task methods:

    F(θ) = L(θ, φ; B_FT) + λ·(L(θ, φ; B_P) − L(θ, z; B_P))
"""

from __future__ import annotations

import torch

from ..adapters import DEFAULT, activate
from ..data import TaskData
from ..losses import group_means

UPPER, LOWER = DEFAULT, "lower"  # φ keeps peft's default name, so the saved adapter loads as usual


def phi_gradient(model, data: TaskData, optimizer, ft: list, peft: list, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate ∇_φ [L(θ,φ;B_FT) + λ·L(θ,φ;B_P)] in the active φ's .grad, as two backward passes (the
    activations held at once are those of one minibatch); returns the two losses, detached. On several
    processes each pass's gradient is averaged over the ranks with its own minibatch's weights."""
    return data.gradient(model, ft, optimizer), data.gradient(model, peft, optimizer, scale=lam)


class UpperObjective:
    """F(θ) = L(θ, φ; B_FT) + λ·(L(θ, φ; B_P) − L(θ, z; B_P)), a tensor on the model's device.

    Two model calls, φ on B_FT ∪ B_P and z on B_P; or, `separate`, one call per minibatch: the shapes of
    φ's gradient passes, so that a loss taken from those passes compares like with like."""

    def __init__(self, model, data: TaskData, ft: list, peft: list, lam: float, separate: bool = False):
        self.model, self.data, self.lam, self.ft, self.peft = model, data, lam, ft, peft
        peft_batch = data.batch(peft)
        # (adapter, batch, sizes of its groups of examples); the groups in order are B_FT·φ, B_P·φ, B_P·z
        if separate:
            self.calls = [(UPPER, data.batch(ft), [len(ft)]), (UPPER, peft_batch, [len(peft)])]
        else:
            self.calls = [(UPPER, data.batch(ft + peft), [len(ft), len(peft)])]
        self.calls.append((LOWER, peft_batch, [len(peft)]))

    def _losses_of(self, calls) -> list[torch.Tensor]:
        losses = []
        for adapter, batch, sizes in calls:
            activate(self.model, adapter)
            losses += group_means(*self.data.calls.losses(self.model, batch, self.data.loss_name), sizes)
        return losses

    def losses(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L(θ,φ;B_FT), L(θ,φ;B_P), L(θ,z;B_P))."""
        # Begin with the adapter the previous evaluation left active: F at θ+εu and θ−εu then switch
        # adapters twice in all, not four times (peft's set_adapter walks every module).
        if self.model.active_adapter == LOWER:
            z_loss, *phi_losses = self._losses_of(self.calls[-1:]) + self._losses_of(self.calls[:-1])
            return (*phi_losses, z_loss)
        return tuple(self._losses_of(self.calls))

    def __call__(self) -> torch.Tensor:
        ft_loss, p_loss, z_loss = self.losses()
        return ft_loss + self.lam * (p_loss - z_loss)

    def parts(self) -> torch.Tensor:
        """[L(θ,φ;B_FT), L(θ,φ;B_P) − L(θ,z;B_P)]: F = parts · coefficients, each part a mean over one minibatch
        (so that several processes average each over the ranks with its own weights)."""
        ft_loss, p_loss, z_loss = self.losses()
        return torch.stack([ft_loss, p_loss - z_loss])

    def given_phi_parts(self, ft_loss: torch.Tensor, p_loss: torch.Tensor) -> torch.Tensor:
        """The parts at the current θ from L(θ,φ;B_FT) and L(θ,φ;B_P) already computed: only z's forward runs."""
        (z_loss,) = self._losses_of(self.calls[-1:])
        return torch.stack([ft_loss, p_loss - z_loss])

    def weights(self) -> list[float]:
        """The parts' denominators on this process (TaskData.loss_weight of its B_FT and B_P)."""
        return [self.data.loss_weight(self.ft), self.data.loss_weight(self.peft)]

    @staticmethod
    def coefficients(lam: float, device, tasks: int = 1) -> torch.Tensor:
        """F's coefficients of the parts, [1, λ] (repeated for the parts of `tasks` tasks), made once per run:
        a tensor built from the host at every step would synchronise."""
        return torch.tensor([1.0, lam] * tasks, device=device)
