"""The run configuration: typed sections, validated wherever values come from (YAML, flags, --set).

    RunConfig                 what to run: method, model, steps, learning rate, batch, evaluation, run folder
      data:    DataConfig     task, data folder, sample sizes, prompt, loss              (flags --task, --n-train, ...)
      adapter: AdapterConfig  PEFT type and size                                         (flags --peft, --lora-r, ...)
      zo:      ZOConfig       the zeroth-order estimator and optimizer                   (flags --zo-eps, ...)
      bilevel: BilevelConfig  Bilevel ZOFO's K, λ, adapter learning rates and step order (flags --bilevel-k, ...)
      meta:    MetaConfig     multi-task meta-training on a MetaICL setting, and its meta-test  (flags --meta-setting, ...)

Every field has one *flag name*: its section's prefix and its own name (`zo_eps`, `bilevel_lambda`, `task`).
A YAML file may nest sections (`zo: {eps: 1.0e-3}`), use dotted keys (`zo.eps`) or flag names
(`zo_eps`); the command line takes `--zo-eps`, and `--set zo_eps=...` in sweeps. Values are converted
and checked by pydantic: `1e-4` is a float wherever it comes from, and a bad value fails at once with
the field, the value and what is allowed, before any model or data is loaded.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .tasks import TASKS

class Section(BaseModel):
    """A group of fields; `flag_prefix` + field name is each field's flag name."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)
    flag_prefix: ClassVar[str] = ""


class DataConfig(Section):
    task: str = Field("sst2", description="task name: " + ", ".join(TASKS))
    data_dir: str | None = Field(None, description="folder with the task data (else $ZOFO_DATA_DIR; with neither, the Hugging Face Hub)")
    hard_prompt: bool = Field(True, description="use the task's MeZO-style hard prompt (false: the raw input fields, same candidates)")
    loss: Literal["auto", "candidates", "lm"] = Field("auto", description="training loss: candidates = cross-entropy over the candidates' scores, lm = LM loss on the gold answer's tokens, auto = candidates unless the task is generative")
    n_train: int = Field(1000, ge=1, description="training examples sampled from the official train split")
    n_val: int = Field(200, ge=1, description="validation examples sampled, disjoint from train (the paper: 500)")
    n_test: int = Field(1000, ge=1, description="test examples sampled from the official validation split")
    max_length: int = Field(512, ge=8, description="longest input in tokens (contexts are cut from the left)")

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task.lower() not in TASKS:
            raise ValueError(f"unknown task; known tasks: {', '.join(TASKS)}")
        return task.lower()


class AdapterConfig(Section):
    peft: Literal["none", "lora", "prefix", "prompt"] = Field("lora", description="adapter type; none = no adapter (full-model MeZO only)")
    lora_r: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha")
    prefix_tokens: int = Field(5, ge=1, description="prefix-tuning virtual tokens")
    prefix_init: Literal["real-activations", "random"] = Field(
        "real-activations", description="prefix-tuning start: the keys and values the model computes for random "
        "vocabulary tokens (MeZO's protocol), or peft's N(0, 1)")
    prompt_tokens: int = Field(10, ge=1, description="prompt-tuning virtual tokens")


class ZOConfig(Section):
    flag_prefix: ClassVar[str] = "zo_"

    eps: float = Field(1e-3, gt=0, description="SPSA perturbation size ε")
    q: int = Field(1, ge=1, description="SPSA directions averaged per step")
    one_sided: bool = Field(False, description="one-sided SPSA [f(θ+εu) − f(θ)]/ε instead of two-sided")
    optimizer: Literal["zo-sgd", "zo-sign-sgd", "zo-adam"] = Field("zo-sgd", description="optimizer consuming the (seed, scalar) estimate; zo-adam keeps two fp32 copies of the parameters")
    momentum: float = Field(0.0, ge=0, lt=1, description="ZO-SGD momentum (adds one fp32 copy of the parameters)")
    perturbation: Literal["in-place", "exact", "per-module"] = Field("in-place", description="in-place: write θ ± εu into the weights, the restore fused with the update (MeZO's memory; round-off drift in bf16/fp16); exact: keep one copy of θ and write θ ± εu from it (no drift; memory of θ once more, about in-place's speed); per-module: perturb each module's weights only during its forward (no drift, one module's copy; slow, no CUDA graphs)")
    weight_decay: float = Field(0.0, ge=0, description="weight decay of the ZO optimizer (biases and normalisation weights excluded)")


class BilevelConfig(Section):
    flag_prefix: ClassVar[str] = "bilevel_"

    k: int = Field(10, ge=1, description="lower-level steps per upper step (two-stage: first-stage steps per second-stage step)")
    lam: float = Field(10.0, ge=0, alias="lambda", description="penalty weight λ")
    lower_lr: float = Field(5e-4, ge=0, description="Adam learning rate of the lower adapter z (two-stage: of its first-stage adapter)")
    upper_lr: float = Field(5e-4, ge=0, description="Adam learning rate of the upper adapter φ")
    eval_adapter: Literal["upper", "lower"] = Field("upper", description="the adapter evaluated, selected and saved with θ: upper = φ (ALGORITHM.md); lower = z (the authors' code, whose runs end on lower steps). Bilevel runs test the other one and θ alone as well")
    cycle: Literal["paper", "authors"] = Field("paper", description="paper = every cycle K lower steps and one upper step, steps // (K + 1) cycles; authors = the first cycle K lower steps, later ones K − 1, until exactly `steps` steps (the last cycle may end on lower steps)")
    optimizer: Literal["separate", "shared"] = Field("separate", description="separate = θ's ZO optimizer at --lr, φ's Adam at --bilevel-upper-lr; shared = one learning rate, --lr, for θ and φ (the authors' code: ZO-Adam on θ, so it needs --zo-optimizer zo-adam)")
    order: Literal["phi-first", "same-point"] = Field("phi-first", description="order within an upper step: phi-first = update φ, then estimate θ's SPSA at the new φ (ALGORITHM.md's box); same-point = estimate θ at the old φ and update both from that point (the authors' code); with --zo-one-sided, F(θ) then reuses the losses of φ's gradient passes")


class MetaConfig(Section):
    flag_prefix: ClassVar[str] = "meta_"

    setting: str = Field("class_to_class", description="MetaICL setting (a file metaicl/config/<setting>.json in the data folder): class_to_class, non_class_to_class, qa_to_qa, non_qa_to_qa, ...")
    tasks_per_step: int = Field(5, ge=1, description="training tasks sampled per outer iteration (M)")
    train_tasks: int | None = Field(None, ge=1, description="use only the first N training tasks of the setting, for quick runs (unset: all)")
    test_tasks: int | None = Field(None, ge=1, description="meta-test only the first N test tasks of the setting (unset: all)")
    val_per_task: int = Field(16, ge=1, description="examples of each training task held out to select on")
    test_cap: int | None = Field(None, ge=1, description="at most N test examples per test task, a seeded sample (unset: all)")
    tune_steps: int = Field(10, ge=0, description="meta-test: Adam steps of the fresh LoRA on each test task's demonstrations")
    tune_lr: float = Field(1e-3, gt=0, description="meta-test: learning rate of that LoRA")
    demo_max_length: int = Field(1024, ge=16, description="tokens of an input with demonstrations (in-context learning, meta-icl's training), cut from the left beyond it as MetaICL does")


SECTIONS: dict[str, type[Section]] = {"data": DataConfig, "adapter": AdapterConfig, "zo": ZOConfig,
                                      "bilevel": BilevelConfig, "meta": MetaConfig}

# Which sections (or single fields) each method reads; the fields of the others do not affect its run.
USED_BY_METHOD = {
    "fo": {"data", "adapter"},
    "mezo": {"data", "adapter", "zo"},
    "bilevel": {"data", "adapter", "zo", "bilevel"},
    "two-stage": {"data", "adapter", "zo", "bilevel.k", "bilevel.lower_lr"},
    "meta-bilevel": {"data.data_dir", "data.max_length", "data.loss", "adapter", "zo", "bilevel.k", "bilevel.lambda",
                     "bilevel.lower_lr", "bilevel.upper_lr", "meta"},
    "meta-mezo": {"data.data_dir", "data.max_length", "data.loss", "zo", "meta"},
    "meta-icl": {"data.data_dir", "data.loss", "meta"},
}
# How a run executes, not what it computes (graphs and compile change losses only at float round-off): a
# run resumes with other values of these, and reports do not split rows on them.
EXECUTION_FIELDS = {"resume", "overwrite", "out_dir", "device", "graphs", "compile", "eval_batch_size", "length_groups",
                    "checkpoint_every", "data.data_dir", "weight_check_every", "collective_timeout", "shard_weights",
                    "on_divergence"}  # what a run that diverges does: a run that did not is the same experiment
META_METHODS = ("meta-bilevel", "meta-mezo", "meta-icl")  # trained on a MetaICL setting, then meta-tested
ADAPTER_METHODS = ("fo", "bilevel", "two-stage", "meta-bilevel")  # train an adapter: need --peft
PEFT_FIELDS = {"adapter.lora_r": "lora", "adapter.lora_alpha": "lora", "adapter.prefix_tokens": "prefix",
               "adapter.prefix_init": "prefix", "adapter.prompt_tokens": "prompt"}


class RunConfig(BaseModel):
    """One training run. The defaults are `make demo`'s job: Bilevel ZOFO with LoRA on SST-2 and the bundled
    SmolLM2-135M, sized for a CPU; configs/ hold the paper's settings."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)

    method: Literal["fo", "mezo", "bilevel", "two-stage", "meta-bilevel", "meta-mezo", "meta-icl"] = Field("bilevel", description="fo = first-order PEFT (Adam on the adapter, base frozen); mezo = SPSA on the whole model (--peft none) or on the adapter; bilevel = Bilevel ZOFO (ZO on the base, first-order on the adapters, penalty λ); two-stage = first-order PEFT, then MeZO on the base with the adapter frozen; meta-bilevel = Bilevel ZOFO meta-training on a MetaICL setting's training tasks, then the meta-test on its test tasks; meta-mezo = the MeZO meta-training baseline (θ alone, no adapters); meta-icl = the MetaICL baseline (first-order full fine-tuning with demonstrations in every input, then in-context prediction)")
    model: str = Field("smollm2-135m-instruct", description="the bundled model, tiny-gpt2 / tiny-opt / tiny-llama, a local Hugging Face folder or a Hub id")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="parameter dtype")
    device: str = Field("auto", description="cpu, cuda, cuda:N or auto (CUDA when available)")
    graphs: Literal["auto", "on", "off"] = Field("auto", description="run every model call (forwards, backwards, evaluation) from CUDA graphs captured once per padded batch shape: 4-6x faster for small models on a GPU; auto = on for CUDA devices, off on the CPU")
    compile: bool = Field(False, description="compile the model's decoder layers with torch.compile (inductor; one layer's code, reused by every layer) inside the CUDA graphs: fuses a small model's elementwise work (about 2x on SmolLM2-135M in bf16), for seconds to tens of seconds of compile once per shape and adapter; needs graphs")
    tf32: bool = Field(False, description="fp32 weights, matmuls on TF32 tensor cores (CUDA): about 8x the fp32 matmul rate of an H200 with 10-bit mantissas in the products; off keeps fp32 arithmetic")
    seed: int = Field(0, ge=0, description="seed of data sampling, adapter initialisation, minibatches and directions")
    steps: int = Field(220, ge=1, description="training steps (bilevel and two-stage: lower and upper steps counted together)")
    lr: float = Field(1e-5, ge=0, description="constant learning rate of the method's main optimizer: Adam on the adapter (fo); the ZO optimizer (mezo; θ in bilevel and in two-stage's second stage)")
    batch_size: int = Field(8, ge=1, description="training examples per step (bilevel: per minibatch, B_FT and B_P each)")
    eval_every: int = Field(55, ge=1, description="validation loss (and a checkpoint) every N steps and at the last step")
    checkpoint_every: int = Field(0, ge=0, description="also a checkpoint every N steps between evaluations (0 = at evaluations only), so that a run killed without warning (a GPU machine taken back) loses at most N steps; each writes the method's state (adapters and their optimizer states; θ comes from the trajectory)")
    length_groups: int = Field(1, ge=1, le=16, description="split each training minibatch into at most this many groups of examples of similar length, each padded on its own (the cut with the fewest padded tokens); the loss and gradient stay the minibatch's, to float round-off. On inputs of uneven length (CB, RTE: a minibatch padded to its longest input is about half padding) it saves compute where a step is compute-bound; each group is a model call of its own")
    eval_batch_size: int = Field(32, ge=1, description="rows per forward when scoring candidates")
    max_new_tokens: int = Field(50, ge=1, description="generation length for SQuAD/DROP")
    on_divergence: Literal["fail", "test-best"] = Field("fail", description="a run whose loss becomes NaN or infinite, or whose model collapses: fail = stop with an error (the log and the last checkpoint kept); test-best = end the run there and test its validation-selected step before the divergence, metrics.json and `zofo report` saying it diverged (for grids at a fixed learning rate, the λ and K ablations, where a cell may diverge). Tuning runs are never chosen when they diverge, either way, and end once their validation loss passes 10 times a uniform guess's (loop.EXPLODED)")
    zero_shot: bool = Field(True, description="also evaluate the model before training")
    test: bool = Field(True, description="evaluate the selected step on the test split (meta-training: the meta-test), and the model before training where zero_shot; false for tuning runs, which choose hyperparameters on validation and read no test split")
    out_dir: str | None = Field(None, description="run folder (else runs/<task>-<method>-<peft>-seed<seed>)")
    resume: bool = Field(False, description="continue the unfinished run in the run folder from its last checkpoint (from the start if it has none)")
    overwrite: bool = Field(False, description="replace the run already in the run folder")
    save_model: bool = Field(True, description="save the full fine-tuned model (methods that change the base weights)")
    weight_check_every: int = Field(100, ge=0, description="on several processes (torchrun): compare a checksum of every weight tensor across the ranks every N steps and at the last step, and stop with the first tensor that differs; 0 = never")
    shard_weights: bool = Field(False, description="on several processes (torchrun): split the base model's weights over the ranks with FSDP2 (fully_shard, one unit per decoder layer), for a model larger than one device's memory; each rank perturbs and updates its own slice with the directions of the unsharded weights (the trajectory replays onto the whole model). The adapters stay whole on every rank. For now: MeZO on the full model and Bilevel ZOFO, with a stateless ZO optimizer, no CUDA graphs")
    collective_timeout: int = Field(1800, ge=1, description="on several processes (torchrun): seconds a rank waits for the others in a collective before it stops with an error (a rank that dies is noticed at once)")

    data: DataConfig = DataConfig()
    adapter: AdapterConfig = AdapterConfig()
    zo: ZOConfig = ZOConfig()
    bilevel: BilevelConfig = BilevelConfig()
    meta: MetaConfig = MetaConfig()

    @field_validator("device")
    @classmethod
    def _device_name(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
            raise ValueError("choose cpu, cuda, cuda:N, mps or auto")
        return device

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        if self.method in ADAPTER_METHODS and self.adapter.peft == "none":
            raise ValueError(f"method {self.method!r} trains an adapter: set --peft lora, prefix or prompt "
                             "(peft none is for full-model mezo)")
        if self.method == "bilevel" and self.bilevel.optimizer == "shared" and self.zo.optimizer != "zo-adam":
            raise ValueError("--bilevel-optimizer shared is the authors' one Adam for θ and φ: set --zo-optimizer zo-adam "
                             f"(got {self.zo.optimizer})")
        if self.method in ("bilevel", "two-stage", "meta-bilevel") and self.steps < self.bilevel.k + 1:
            raise ValueError(f"method {self.method!r} needs steps >= bilevel.k + 1 = {self.bilevel.k + 1} (one upper "
                             f"step with its K lower steps), got steps = {self.steps}")
        if self.graphs == "on" and self.zo.perturbation == "per-module" and self.uses("zo.perturbation"):
            raise ValueError("--zo-perturbation per-module perturbs inside each forward, which a CUDA graph cannot "
                             "capture: use --zo-perturbation exact (no drift either), or --graphs off")
        if self.compile and self.graphs == "off":
            raise ValueError("--compile compiles the calls that CUDA graphs capture: drop --graphs off, or --compile")
        if self.tf32 and self.dtype != "fp32":
            raise ValueError(f"--tf32 is a matmul mode for fp32 weights, and --dtype is {self.dtype}: drop --tf32")
        if self.shard_weights:
            if not (self.method == "bilevel" or (self.method == "mezo" and self.adapter.peft == "none")):
                raise ValueError("--shard-weights is built for MeZO on the full model (--method mezo --peft none) and "
                                 f"Bilevel ZOFO so far, not --method {self.method} --peft {self.adapter.peft}")
            if self.zo.optimizer == "zo-adam" or self.zo.momentum:
                raise ValueError("--shard-weights needs a stateless ZO optimizer (zo-sgd without momentum, or "
                                 "zo-sign-sgd): each rank's optimizer state would be its own shard's")
            if self.graphs == "on" or self.compile or self.zo.perturbation == "per-module":
                raise ValueError("--shard-weights gathers each layer's weights inside the forward, which a CUDA graph "
                                 "cannot capture and per-module perturbation cannot hook: drop --graphs on, --compile "
                                 "and --zo-perturbation per-module")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run, or replace it")
        generative = TASKS[self.data.task].generative
        if generative and self.data.loss == "candidates":
            raise ValueError(f"task {self.data.task!r} is answered by generation: its loss must be 'lm' (or 'auto')")
        return self

    # --- derived values ------------------------------------------------------------------------

    @property
    def loss(self) -> str:
        """The training loss: candidates for classification, lm for generation (or as configured)."""
        return self.loss_for(TASKS[self.data.task])

    def loss_for(self, task) -> str:
        if self.data.loss == "auto":
            return "lm" if task.generative else "candidates"
        return self.data.loss

    @property
    def trains_base_model(self) -> bool:
        """Whether the method moves θ (and the run saves it as model/) besides any adapter."""
        return self.method in ("bilevel", "two-stage") or (self.method == "mezo" and self.adapter.peft == "none")

    def uses_graphs(self, device) -> bool:
        """Whether model calls run from CUDA graphs on `device` (graphs=on needs a CUDA device)."""
        if self.graphs == "on" and device.type != "cuda":
            raise ConfigError(f"--graphs on needs a CUDA device, and this run is on {device}: use --graphs auto or off")
        per_module = self.zo.perturbation == "per-module" and self.uses("zo.perturbation")
        graphs = device.type == "cuda" and self.graphs != "off" and not per_module and not self.shard_weights
        if self.compile and not graphs:
            raise ConfigError(f"--compile compiles the calls that CUDA graphs capture, and this run has none ({device}"
                              f"{', per-module perturbation' if per_module else ''}): drop --compile")
        return graphs

    def run_dir(self) -> Path:
        if self.out_dir:
            return Path(self.out_dir)
        name = self.meta.setting if self.method in META_METHODS else self.data.task
        peft = self.adapter.peft if self.uses("adapter.peft") else "none"
        return Path("runs") / f"{name}-{self.method}-{peft}-seed{self.seed}"

    def uses(self, path: str) -> bool:
        """Whether this run's method reads the field at `path` (e.g. "bilevel.lambda"): report rows leave
        the others blank, so that runs of different methods do not split on fields they ignore."""
        section, _, name = path.partition(".")
        if not name:
            return True
        used = USED_BY_METHOD[self.method]
        if section not in used and path not in used:
            return False
        return PEFT_FIELDS.get(path, self.adapter.peft) == self.adapter.peft

    def to_dict(self) -> dict:
        return self.model_dump(by_alias=True)

    def replace(self, **values) -> "RunConfig":
        """A copy with fields changed (any spelling make_config takes), validated again."""
        return make_config(self.to_dict(), values)


# --- field names, flags and parsing -----------------------------------------------------------


def fields() -> dict[str, tuple[str, Any]]:
    """flag name -> (dotted path, pydantic FieldInfo), for every leaf field, in declaration order."""
    table = {}
    for name, info in RunConfig.model_fields.items():
        section = SECTIONS.get(name)
        if section is None:
            table[name] = (name, info)
            continue
        for field_name, field_info in section.model_fields.items():
            key = field_info.alias or field_name
            table[section.flag_prefix + key] = (f"{name}.{key}", field_info)
    return table


FIELDS = fields()
PATHS = {path: flag for flag, (path, _) in FIELDS.items()}


def canonical(key: str, where: str = "") -> str:
    """The dotted path of a field given by flag name (zo_eps), dotted path (zo.eps) or nested key."""
    if key in PATHS:
        return key
    if key in FIELDS:
        return FIELDS[key][0]
    near = difflib.get_close_matches(key, list(FIELDS) + list(PATHS), n=3)
    hint = f"; did you mean {' or '.join(map(repr, near))}?" if near else f"; fields: {', '.join(FIELDS)}"
    raise ConfigError(f"{where}unknown config field {key!r}{hint}")


def flatten(values: dict | None, where: str = "") -> dict[str, Any]:
    """{dotted path: value} from nested sections, dotted keys or flag names."""
    flat = {}
    for key, value in (values or {}).items():
        key = str(key)
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{key} must be a mapping of its fields ({', '.join(SECTIONS[key].model_fields)}), "
                                  f"got {value!r}")
            for field_key, field_value in value.items():
                flat[canonical(f"{key}.{field_key}", where)] = field_value
        else:
            flat[canonical(key, where)] = value
    return flat


def nest(flat: dict[str, Any]) -> dict:
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        section, _, name = path.partition(".")
        if name:
            nested.setdefault(section, {})[name] = value
        else:
            nested[section] = value
    return nested


def make_config(*layers: dict | None, where: str = "") -> RunConfig:
    """A RunConfig from layers of values (later layers override earlier ones), validated.
    `where` names the source in error messages (a file, "command line")."""
    flat: dict[str, Any] = {}
    for layer in layers:
        flat.update(flatten(layer, where))
    try:
        return RunConfig.model_validate(nest(flat))
    except ValidationError as error:
        raise ConfigError(describe(error, where)) from None


def experiment(config: RunConfig, device_type: str) -> str:
    """What a run computes, comparable across runs and sweeps: its resolved config without the fields that only
    say how or where it runs (EXECUTION_FIELDS), and the type of device it runs on (cpu or cuda), which draws
    the ZO directions its own way."""
    return repr((device_type, sorted((k, v) for k, v in flatten(config.to_dict()).items() if k not in EXECUTION_FIELDS)))


def device_type_ran_on(metrics: dict) -> str:
    """cpu or cuda, from a finished run's metrics.json (its "device": "cpu (x86_64, 2 threads)", "NVIDIA H200")."""
    return "cpu" if str(metrics.get("device", "cpu")).startswith("cpu") else "cuda"


def describe(error: ValidationError, where: str = "") -> str:
    """One line per bad value: the field, its flag, the value and what is allowed."""
    lines = []
    for problem in error.errors():
        path = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if path in PATHS:
            flag = "--" + PATHS[path].replace("_", "-")
            lines.append(f"{where}config field {path!r} ({flag}) = {problem['input']!r}: {message}")
        else:
            lines.append(f"{where}{message}")
    return "\n".join(lines)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """A YAML file's contents; a missing or unparsable file names itself and the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {error.object[error.start]:#x} at offset {error.start})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None


def load_config(path: str | Path, *overrides: dict | None) -> RunConfig:
    """A config file (nested, dotted or flag-named fields), with overrides on top."""
    values = read_yaml(path) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of field: value, got {type(values).__name__}")
    where = f"{path}{' with overrides' if any(overrides) else ''}: "
    return make_config(values, *overrides, where=where)


def parse_selection(pairs: list[str]) -> dict[str, list[Any]]:
    """["task=sst2,copa", "method=fo"] -> {"data.task": ["sst2", "copa"], "method": ["fo"]}: the values
    each field may take (`zofo sweep --only`), read as YAML scalars."""
    selection = {}
    for pair in pairs:
        key, _, values = pair.partition("=")
        if not values.strip():
            raise ConfigError(f"--only takes field=value[,value...], e.g. --only task=sst2,copa; got {pair!r}")
        selection[canonical(key.strip(), "--only: ")] = [yaml_scalar(value.strip()) for value in values.split(",")]
    return selection


NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def yaml_scalar(text: str) -> Any:
    """A command-line value as YAML reads it (0 an int, true a bool), a number as a number (YAML 1.1 reads
    1e-4 as text), else the text itself."""
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return text
    return float(value) if isinstance(value, str) and NUMBER.fullmatch(value) else value


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """["steps=500", "zo_eps=1e-4"] -> {"steps": 500, "zo.eps": 1e-4}; values are read as YAML scalars
    and converted by the config's types (so 1e-4 is a float)."""
    values = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set takes field=value, got {pair!r}")
        key, value = pair.split("=", 1)
        values[canonical(key.strip(), "--set: ")] = yaml_scalar(value.strip())
    return values
