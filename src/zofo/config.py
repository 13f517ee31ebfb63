"""The run configuration: one dataclass, readable from YAML, overridable from the command line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

METHODS = ("fo", "mezo", "bilevel", "two-stage")


def option(default, help: str, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """The defaults are `make demo`'s job: Bilevel ZOFO with LoRA on SST-2 and the bundled SmolLM2-135M,
    small enough for a CPU (20 upper steps with K = 10); configs/ hold the paper's settings."""

    # what is solved
    task: str = option("sst2", "task name (sst2, boolq, cb, copa, rte, wic, wsc, winogrande, multirc, record, squad, drop)")
    method: str = option("bilevel", "training method: fo = first-order PEFT (Adam on the adapter, base frozen); mezo = zeroth-order SPSA on the whole model (--peft none) or on the adapter; bilevel = Bilevel ZOFO (ZO on the base, first-order on the adapter, penalty λ); two-stage = first-order PEFT, then MeZO on the base with the adapter frozen", METHODS)
    peft: str = option("lora", "adapter type; none = no adapter (full-model MeZO)", ("none", "lora", "prefix", "prompt"))
    model: str = option("smollm2-135m-instruct", "bundled model name, tiny-gpt2/tiny-opt/tiny-llama, a local HF folder or a Hub id")
    hard_prompt: bool = option(True, "use the task's MeZO-style hard prompt (false: raw input fields, same candidates)")
    loss: str = option("auto", "training loss: candidates = cross-entropy over candidate scores, lm = LM loss on the answer tokens, auto = candidates unless the task is generative", ("auto", "candidates", "lm"))
    # optimisation
    steps: int = option(220, "training steps (bilevel and two-stage: lower and upper steps counted together)")
    lr: float = option(1e-5, "learning rate (constant) of the method's main optimizer: Adam on the adapter (fo), the ZO optimizer (mezo; θ in bilevel and in two-stage's second stage)")
    lower_lr: float = option(5e-4, "bilevel: Adam learning rate of the lower adapter z; two-stage: of the first-stage adapter")
    upper_lr: float = option(5e-4, "bilevel: Adam learning rate of the upper adapter φ")
    bilevel_lambda: float = option(10.0, "bilevel: penalty weight λ")
    bilevel_mixed_batch: bool = option(False, "bilevel with LoRA: evaluate F's three losses in one forward through peft's mixed-adapter batch (adapter_names) instead of two forwards (φ on B_FT ∪ B_P, z on B_P). The rows are the same; it measured no faster on the CPU or on an H200 (results/README.md)")
    bilevel_order: str = option("phi-first", "bilevel: order within an upper step. phi-first = update φ, then estimate θ's SPSA at the new φ (ALGORITHM.md's box); same-point = estimate θ at the old φ and update both from that point (the authors' code); with --zo-one-sided, F(θ) then reuses the losses of φ's gradient passes and costs one minibatch forward instead of three", ("phi-first", "same-point"))
    bilevel_k: int = option(10, "bilevel: lower-level steps per upper step (steps count lower and upper steps together); two-stage: first-stage steps per second-stage step")
    batch_size: int = option(8, "training examples per step (bilevel: per minibatch, B_FT and B_P each)")
    eval_every: int = option(55, "evaluate the validation loss (and checkpoint) every N steps and at the last step")
    seed: int = option(0, "seed for data sampling, initialisation and minibatches")
    # zeroth-order engine
    zo_eps: float = option(1e-3, "SPSA perturbation size ε")
    zo_q: int = option(1, "SPSA perturbations averaged per step")
    zo_one_sided: bool = option(False, "one-sided SPSA [f(θ+εu) − f(θ)]/ε instead of two-sided")
    zo_optimizer: str = option("zo-sgd", "optimizer for the zeroth-order estimate", ("zo-sgd", "zo-sign-sgd", "zo-adam"))
    zo_momentum: float = option(0.0, "ZO-SGD momentum (adds one fp32 copy of the parameters)")
    zo_perturbation: str = option("in-place", "in-place: perturb θ itself, restore fused with the update (MeZO's memory, round-off drift); exact: perturb each module's weights only during its forward (θ changes only by updates; extra copies per forward)", ("in-place", "exact"))
    weight_decay: float = option(0.0, "weight decay of the ZO optimizer (biases and norms excluded)")
    # adapters
    lora_r: int = option(8, "LoRA rank")
    lora_alpha: int = option(16, "LoRA alpha")
    prefix_tokens: int = option(5, "prefix-tuning virtual tokens")
    prompt_tokens: int = option(10, "prompt-tuning virtual tokens")
    # data
    data_dir: str | None = option(None, "folder with the task data (default: $ZOFO_DATA_DIR; absent: the Hugging Face Hub)")
    n_train: int = option(1000, "training examples sampled")
    n_val: int = option(200, "validation examples sampled (disjoint from train; the paper: 500)")
    n_test: int = option(1000, "test examples sampled from the official validation split")
    max_length: int = option(512, "longest input in tokens (contexts are cut from the left)")
    # evaluation
    eval_batch_size: int = option(32, "rows per forward when scoring candidates")
    max_new_tokens: int = option(50, "generation length for SQuAD/DROP")
    zero_shot: bool = option(True, "also evaluate the model before training")
    # where and how
    dtype: str = option("fp32", "parameter dtype", ("fp32", "bf16", "fp16"))
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    out_dir: str | None = option(None, "run folder (default: runs/<task>-<method>-<peft>-seed<seed>)")
    resume: bool = option(False, "continue a killed zeroth-order run from its last checkpoint and trajectory")
    save_model: bool = option(True, "save the full fine-tuned model (methods that change the base weights)")

    def resolved_loss(self, generative: bool) -> str:
        if generative and self.loss == "candidates":
            raise ValueError(f"task {self.task!r} is generative: its loss must be 'lm'")
        if self.loss == "auto":
            return "lm" if generative else "candidates"
        return self.loss

    def run_dir(self) -> Path:
        if self.out_dir:
            return Path(self.out_dir)
        return Path("runs") / f"{self.task}-{self.method}-{self.peft}-seed{self.seed}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


def make_config(base: dict | None = None, **overrides) -> TrainConfig:
    """A TrainConfig from a dict (e.g. a YAML file) and overrides; unknown or invalid values name the field."""
    values = {**(base or {}), **{k: v for k, v in overrides.items() if v is not None}}
    known = {f.name: f for f in config_fields()}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; allowed fields: {sorted(known)}")
    for name, value in values.items():
        choices = known[name].metadata.get("choices")
        if choices and value not in choices:
            raise ValueError(f"config field {name!r} is {value!r}; allowed values: {list(choices)}")
    return TrainConfig(**values)


def load_config(path: str | Path, **overrides) -> TrainConfig:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    base = yaml.safe_load(path.read_text()) or {}
    if not isinstance(base, dict):
        raise ValueError(f"{path}: a config file must be a mapping of field: value")
    return make_config(base, **overrides)
