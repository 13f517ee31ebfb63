"""MeZO: zeroth-order SPSA on the whole model (--peft none) or on an adapter's parameters.

    θ_zo = every base weight (full) or the adapter's weights (lora / prefix / prompt, base frozen)
    for t = 1 .. T:
        B ~ D_train,  s_t = seed of step t
        g = SPSA of L(θ_zo; B) along u(s_t)                 # two forwards, nothing differentiated
        θ_zo ← ZO-optimizer.step(θ_zo, g, u(s_t))           # u regenerated from s_t
        append (t, s_t, g, lr) to the trajectory
    (the selected step is rebuilt from the start point and the trajectory: no copy of θ is kept)
"""

from __future__ import annotations

from ..adapters import DEFAULT, base_parameters, with_adapters
from ..zo import mix, zo_engine
from .base import Method


def mezo_parameters(model, config):
    """The model to train and the named parameters SPSA moves (no autograd anywhere)."""
    if config.adapter.peft == "none":
        return model.requires_grad_(False).eval(), base_parameters(model)
    model = with_adapters(model, config.adapter, [DEFAULT], config.seed)
    named = [(n, p) for n, p in model.named_parameters() if DEFAULT in n.split(".")]
    return model.requires_grad_(False), named


class MeZO(Method):
    name = "mezo"

    def __init__(self, model, tasks, config, trajectory):
        super().__init__(model, tasks, config, trajectory)
        self.data = tasks.single
        self.model, named = mezo_parameters(model, config)
        self.zo = zo_engine(self.model, named, config.zo, config.lr)
        self.sampler = self.data.sampler(config.batch_size, config.seed)

    @classmethod
    def replayed_parameters(cls, model, config):
        return mezo_parameters(model, config)

    def step(self, iteration: int) -> dict:
        step = iteration + 1
        examples = self.sampler.next()  # this rank's shard, on several processes
        batch = self.data.batch(examples)
        estimate = self.zo_step(lambda: self.data.batch_loss(self.model, batch), mix(self.config.seed, step), step,
                                weight=self.data.loss_weight(examples))
        return {"train_loss": estimate.loss, "projected_grad": estimate.scalars[0]}

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
