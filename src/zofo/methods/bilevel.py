"""Bilevel ZOFO (the paper's Algorithm 2): zeroth-order on the base model θ at the upper level,
first-order on the adapter at the lower level, tied by a penalty.

    φ (upper adapter, "default") and z (lower adapter, "lower"): same PEFT type, same initial values
    split the training sample 1 : 2 into D_FT and D_PEFT
    for t = 1 .. T  (T = steps // (K + 1): lower and upper steps count together):
        repeat K times:                                    # lower level: z ← argmin L(θ, z; D_PEFT)
            B ~ D_PEFT;  z ← Adam_z.step(∇_z L(θ, z; B))
        B_FT ~ D_FT,  B_P ~ D_PEFT                         # one pair of minibatches for the upper step
        φ ← Adam_φ.step(∇_φ [L(θ, φ; B_FT) + λ·L(θ, φ; B_P)])      # exact gradient (z does not depend on φ)
        g = SPSA of F(θ) = L(θ, φ; B_FT) + λ·(L(θ, φ; B_P) − L(θ, z; B_P)), at the new φ, seed s_t
        θ ← ZO-optimizer.step(θ, g, u(s_t))
    evaluate and save θ with φ

`bilevel_order` makes the order within an upper step explicit (ALGORITHM.md allows either):
    phi-first   (the box above) φ is updated first and θ estimated at the new φ.
    same-point  (the authors' code) F is estimated at the old φ and both are updated from that point.
                With one-sided SPSA, F(θ) = L(θ,φ;B_FT) + λ·(L(θ,φ;B_P) − L(θ,z;B_P)) then takes its
                first two losses from the forwards of φ's gradient: one minibatch forward (z on B_P)
                instead of three.
F's three losses cost two model calls (φ on B_FT ∪ B_P, z on B_P); with LoRA, `bilevel_mixed_batch` puts
all three in one call through peft's mixed-adapter batch (the same rows; slower in our measurements).
"""

from __future__ import annotations

import random

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from torch.profiler import record_function
from tqdm.auto import tqdm

from ..adapters import adapter_of, attach_adapter
from ..config import TrainConfig
from ..losses import example_losses, group_means
from ..models import load_model
from ..runs import Run
from ..training import BestCheckpoint, TaskData, check_finite
from ..zo import Trajectory, mix, replay
from .mezo import zo_machinery

UPPER, LOWER = "default", "lower"  # φ keeps peft's default name, so the saved adapter loads as usual


def split_ft_peft(n: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of D_FT (one third) and D_PEFT (two thirds), disjoint, shuffled with the seed."""
    order = list(range(n))
    random.Random(f"bilevel-split-{seed}").shuffle(order)
    return order[: n // 3], order[n // 3 :]


def adapter_parameters(model, name: str) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if f".{name}." in n]


def base_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """θ: every weight of the base model, none of the adapters'."""
    return [(n, p) for n, p in model.named_parameters() if "lora_" not in n and not n.startswith("prompt_encoder")]


def bilevel_model(model, config: TrainConfig):
    """The base model with φ and z attached, z starting from φ's initial values."""
    torch.manual_seed(config.seed)
    adapter = adapter_of(config)
    model = attach_adapter(model, adapter, adapter_name=UPPER)
    model.add_adapter(LOWER, adapter)
    set_peft_model_state_dict(model, get_peft_model_state_dict(model, adapter_name=UPPER), adapter_name=LOWER)
    for p in adapter_parameters(model, UPPER) + adapter_parameters(model, LOWER):
        p.requires_grad_(True)
    for _, p in base_parameters(model):
        p.requires_grad_(False)
    return model.eval()


def activate(model, name: str) -> None:
    """Make `name` the active adapter; peft's set_adapter walks every module, so skip it when it is."""
    if model.active_adapter != name:
        model.set_adapter(name)


def theta_engine(model, config: TrainConfig):
    """SPSA and the ZO optimizer over θ, the adapters left out."""
    return zo_machinery(model, base_parameters(model), config)


class UpperObjective:
    """F(θ) = L(θ, φ; B_FT) + λ·(L(θ, φ; B_P) − L(θ, z; B_P)), with as few model calls as peft allows.

    layout: "concatenated" (φ on B_FT ∪ B_P, z on B_P: two calls), "mixed" (all three in one call
    through peft's mixed-adapter batch, LoRA only) or "separate" (one call per minibatch, the shapes
    of φ's gradient passes, so that a loss taken from those passes compares like with like)."""

    LAYOUTS = ("concatenated", "mixed", "separate")

    def __init__(self, model, data: TaskData, ft: list, peft: list, lam: float, layout: str = "concatenated"):
        if layout not in self.LAYOUTS:
            raise ValueError(f"layout must be one of {self.LAYOUTS}, got {layout!r}")
        self.model, self.data, self.lam = model, data, lam
        nf, npf, device = len(ft), len(peft), model.device
        # (adapter, batch, sizes of its groups of examples); the groups in order are B_FT·φ, B_P·φ, B_P·z
        if layout == "mixed":
            names = [UPPER] * (nf + npf) + [LOWER] * npf
            self.calls = [(None, data.batch(ft + peft + peft, device).with_adapters(names), [nf, npf, npf])]
            return
        peft_batch = data.batch(peft, device)  # B_P goes through z, and through φ too when separate
        if layout == "separate":
            self.calls = [(UPPER, data.batch(ft, device), [nf]), (UPPER, peft_batch, [npf])]
        else:
            self.calls = [(UPPER, data.batch(ft + peft, device), [nf, npf])]
        self.calls.append((LOWER, peft_batch, [npf]))

    def _losses_of(self, calls) -> list[torch.Tensor]:
        losses = []
        for adapter, batch, sizes in calls:
            if adapter is not None:
                activate(self.model, adapter)
            losses += group_means(*example_losses(self.model, batch, self.data.loss_name), sizes)
        return losses

    def losses(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L(θ,φ;B_FT), L(θ,φ;B_P), L(θ,z;B_P))."""
        # Begin with the adapter left active by the previous evaluation: F at θ+εu and θ−εu then
        # switch adapters twice in all, not four times.
        if len(self.calls) > 1 and self.model.active_adapter == LOWER:
            z_loss, *phi_losses = self._losses_of(self.calls[-1:]) + self._losses_of(self.calls[:-1])
            return (*phi_losses, z_loss)
        return tuple(self._losses_of(self.calls))

    def __call__(self) -> float:
        ft_loss, p_loss, z_loss = self.losses()
        return (ft_loss + self.lam * (p_loss - z_loss)).item()

    def given_phi_losses(self, ft_loss: torch.Tensor, p_loss: torch.Tensor) -> float:
        """F at the current θ from L(θ,φ;B_FT) and L(θ,φ;B_P) already computed: only z's forward runs."""
        if self.calls[-1][0] != LOWER:
            raise ValueError("the mixed layout evaluates z's loss only together with φ's")
        (z_loss,) = self._losses_of(self.calls[-1:])
        return (ft_loss + self.lam * (p_loss - z_loss)).item()


def upper_steps(config: TrainConfig) -> int:
    return max(1, config.steps // (config.bilevel_k + 1))


class BilevelZOFO:
    """The state of one Bilevel ZOFO run and its two kinds of step."""

    ORDERS = ("phi-first", "same-point")

    def __init__(self, model, data: TaskData, config: TrainConfig):
        if config.bilevel_mixed_batch and config.peft != "lora":
            raise ValueError("bilevel_mixed_batch needs peft lora: peft mixes adapters in one batch only for LoRA")
        if config.bilevel_order not in self.ORDERS:
            raise ValueError(f"bilevel_order must be one of {self.ORDERS}, got {config.bilevel_order!r}")
        # same-point with one-sided SPSA: F(θ) takes φ's two losses from the forwards of φ's gradient
        self.reuse_phi_forwards = config.bilevel_order == "same-point" and config.zo_one_sided
        if self.reuse_phi_forwards and config.bilevel_mixed_batch:
            raise ValueError("bilevel_mixed_batch cannot be combined with bilevel_order same-point and "
                             "zo_one_sided: F(θ) then reuses φ's gradient passes, one minibatch each")
        self.model, self.data, self.config = bilevel_model(model, config), data, config
        self.lam = config.bilevel_lambda
        self.layout = "mixed" if config.bilevel_mixed_batch else "separate" if self.reuse_phi_forwards else "concatenated"
        self.space, self.spsa, self.theta_optimizer = theta_engine(self.model, config)
        self.phi_optimizer = torch.optim.Adam(adapter_parameters(self.model, UPPER), lr=config.upper_lr)
        self.z_optimizer = torch.optim.Adam(adapter_parameters(self.model, LOWER), lr=config.lower_lr)

    def lower_level(self, peft_batches: list[list]) -> list[torch.Tensor]:
        """K steps z ← Adam_z.step(∇_z L(θ, z; B)), one per minibatch B of D_PEFT; θ and φ untouched.
        z stays the active adapter for all K steps: peft's set_adapter walks every module (milliseconds
        on a 24-layer model), and the losses stay on the device so that no step waits for the host."""
        with record_function("bilevel.lower_level"):
            activate(self.model, LOWER)
            losses = []
            for peft_batch in peft_batches:
                loss = self.data.loss_fn()(self.model, self.data.batch(peft_batch, self.model.device))
                loss.backward()
                self.z_optimizer.step()
                self.z_optimizer.zero_grad(set_to_none=True)
                losses.append(loss.detach())
            activate(self.model, UPPER)
        return losses

    def phi_gradient(self, ft_batch: list, peft_batch: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate ∇_φ [L(θ,φ;B_FT) + λ·L(θ,φ;B_P)] in φ's .grad, as two backward passes: the
        activations held at once are those of one minibatch, as in a first-order PEFT step.
        Returns the two losses, detached."""
        model, data, loss_fn = self.model, self.data, self.data.loss_fn()
        ft_loss = loss_fn(model, data.batch(ft_batch, model.device))
        ft_loss.backward()
        p_loss = loss_fn(model, data.batch(peft_batch, model.device))
        (self.lam * p_loss).backward()
        return ft_loss.detach(), p_loss.detach()

    def phi_update(self) -> None:
        self.phi_optimizer.step()
        self.phi_optimizer.zero_grad(set_to_none=True)

    def upper_step(self, ft_batch: list, peft_batch: list, seed: int):
        """φ by its exact gradient and θ by SPSA on F, in the configured order; z untouched."""
        with record_function("bilevel.phi_gradient"):  # the labels show in torch.profiler traces
            ft_loss, p_loss = self.phi_gradient(ft_batch, peft_batch)
        if self.config.bilevel_order == "phi-first":
            self.phi_update()
        with record_function("bilevel.theta_estimate"):
            objective = UpperObjective(self.model, self.data, ft_batch, peft_batch, self.lam, self.layout)
            at_theta = objective.given_phi_losses(ft_loss, p_loss) if self.reuse_phi_forwards else None
            estimate = self.spsa.estimate(objective, seed, at_theta=at_theta)
            activate(self.model, UPPER)  # an odd number of evaluations of F leaves z active
        if self.config.bilevel_order == "same-point":
            self.phi_update()  # from the gradient at the point where F was estimated
        with record_function("bilevel.theta_update"):
            self.theta_optimizer.step(estimate)
        return ft_loss.item(), p_loss.item(), estimate

    def forward_passes_per_upper_cycle(self) -> int:
        """Forward passes over one minibatch each (a lower batch, B_FT or B_P) in one upper step and its
        K lower steps, however they are grouped into model calls; K + 2 of them carry a backward."""
        q, two_sided = self.spsa.q, self.spsa.two_sided
        points = 2 * q if two_sided else q + 1  # evaluations of F, three minibatch forwards each
        reused = 2 if self.reuse_phi_forwards else 0  # F(θ)'s φ losses come from φ's gradient passes
        return self.config.bilevel_k + 2 + 3 * points - reused


def train(model, data: TaskData, config: TrainConfig, run: Run):
    method = BilevelZOFO(model, data, config)
    ft_indices, peft_indices = split_ft_peft(len(data.train), config.seed)
    ft_sampler = data.sampler(config.batch_size, mix(config.seed, 1), len(ft_indices))
    peft_sampler = data.sampler(config.batch_size, mix(config.seed, 2), len(peft_indices))
    draw_ft = lambda: [data.train[ft_indices[i]] for i in ft_sampler.next()]
    draw_peft = lambda: [data.train[peft_indices[i]] for i in peft_sampler.next()]
    trajectory, best, best_upper_step = Trajectory(run.folder / "trajectory.jsonl"), BestCheckpoint(), 0
    trajectory.start(method.space.directions)
    K, total = config.bilevel_k, upper_steps(config)

    progress = tqdm(range(1, total + 1), desc=f"bilevel-{config.peft}", unit="upper step")
    for t in progress:
        lower_losses = method.lower_level([draw_peft() for _ in range(K)])
        seed = mix(config.seed, t)
        ft_loss, p_loss, estimate = method.upper_step(draw_ft(), draw_peft(), seed)
        check_finite(estimate.loss, t, seed)
        trajectory.append(t, seed, estimate, method.theta_optimizer.lr)

        step = t * (K + 1)  # lower and upper steps counted together
        run.log(step=step, train_loss=ft_loss, lower_loss=lower_losses[-1].item() if K else None,
                penalty_phi=p_loss, upper_objective=estimate.loss)
        if step // config.eval_every > (step - K - 1) // config.eval_every or t == total:
            val_loss = data.validation_loss(method.model)
            run.log(step=step, val_loss=val_loss)
            if best.update(step, val_loss, get_peft_model_state_dict(method.model, adapter_name=UPPER)):
                best_upper_step = t
            progress.set_postfix(F=f"{estimate.loss:.3f}", val=f"{val_loss:.3f}", best=best.step)

    forwards = method.forward_passes_per_upper_cycle()
    # θ with φ at the selected step: φ from its copy, θ rebuilt from the base and the trajectory.
    if best_upper_step != total:
        del method
        fresh, _ = load_model(config.model, config.dtype, config.device, seed=config.seed)
        method = BilevelZOFO(fresh, data, config)
        replay(trajectory, method.spsa, method.theta_optimizer, until=best_upper_step)
    model = method.model
    set_peft_model_state_dict(model, best.state, adapter_name=UPPER)
    model.delete_adapter(LOWER)
    model.set_adapter(UPPER)
    method.space.unpack()
    return model, {**best.summary(), "best_upper_step": best_upper_step, "upper_steps": total,
                   "forward_passes_per_upper_cycle": forwards, "trajectory_bytes": trajectory.path.stat().st_size,
                   "split": {"ft": len(ft_indices), "peft": len(peft_indices)}}
