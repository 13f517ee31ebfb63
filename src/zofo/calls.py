"""Every model call of training and evaluation, eager or replayed from CUDA graphs.

A small model's step on a GPU is bound by kernel launches, not arithmetic: SmolLM2-135M's eager forward
takes 35 ms on an H200, the same forward replayed from a CUDA graph 6-8 ms. With `graphs` on, each call
pads its batch to a bucketed static shape (batches.BatchShape.bucketed), copies it into that shape's
static input tensors and replays the graph captured for (what is computed, the shape, the active adapter);
the first call of each kind captures it, which costs a warm-up run and the capture (well under a second
for a small model). Three kinds of call:

    losses(model, batch, loss)           per-example loss values and weights, no gradient
    scores(model, batch)                 each example's option scores (candidate scoring)
    backward(model, batch, loss, scale)  the mean loss, its gradient times `scale` accumulated into .grad

A training minibatch may come as a batches.GroupedBatch, its examples in a few batches of similar length
(`length_groups`): losses and backward run each group and give the minibatch's values, in its order, and
its mean's gradient (each group's backward scaled by its share of the weights, a number the backward's graph
reads from a tensor, so that one graph serves every scale).

A graph reads the weights where they were when it was captured, so everything that moves them must do so
in place (optimizers, the ZO passes and loading adapter states do); if a parameter's storage moves
(packing, unpacking, new adapters), the model's graphs are dropped and captured again. A backward graph
accumulates into the .grad tensors that existed at its capture: zero them in place (zero_grad(set_to_none=
False)); if one is replaced, the graph is captured again. Outputs are copied out of the graph's memory
at once: graphs share one memory pool and a later replay may overwrite it.

Mode "static" pads like "graphs" but runs eagerly: the same shapes and arithmetic on any device, which
is how the CPU tests check that padding changes no loss, score or gradient.

With `compile`, the model's repeated blocks (its decoder layers, the classes it names in
`_no_split_modules`) are compiled by torch.compile (inductor), in place, and what a graph captures runs them
compiled: the norms, activations and rotary embeddings fuse into a few Triton kernels, which roughly halves
a small model's captured forward. The blocks share their code, so one block's graph is compiled and every
block reuses it (regional compilation): compiling each whole call instead took 12-83 s for SmolLM2-135M's
forward and 556 s for a Bilevel cycle's calls on an H200, cold. A block compiles once more for its first new row
count and first new length (then with dynamic sizes: later bucket shapes only capture), and once per
adapter; the time is counted in `capture_seconds`. A model that names no blocks has each call compiled
whole. The graph is still ours, not torch.compile's "reduce-overhead": one capture per (kind, shape,
adapter) as above.
"""

from __future__ import annotations

import time
import weakref
import torch

from .batches import GroupedBatch, OptionBatch
from .losses import example_losses, example_weights, grouped_scores, option_scores

MODES = ("eager", "static", "graphs")
# dynamo's default (8) is too few for kinds x adapters x loss names on one function, and for prefix tuning's
# compiled layers, each specialised to its index in the prefix cache (30 layers x 2 shapes x 2 adapters)
RECOMPILE_LIMIT = 256
WARMUP_RUNS = 2  # eager runs on a side stream before capture (cuBLAS workspaces, lazy initialisation)
STAGED = 32  # batches kept padded and pinned: SPSA evaluates a minibatch (each of its length groups) twice


def _mean_loss_backward(model, batch: OptionBatch, loss: str, scale: float | torch.Tensor) -> torch.Tensor:
    values, weights = example_losses(model, batch, loss)
    mean = values.sum() / weights.sum()
    (mean if isinstance(scale, float) and scale == 1.0 else mean * scale).backward()
    return mean.detach()


def _scores(model, batch: OptionBatch) -> torch.Tensor:
    return grouped_scores(option_scores(model, batch), batch)


class _Graph:
    """One captured call. Its input is one flat int64 buffer on the device, into which a whole batch is
    copied from pinned host memory in one transfer; the graph itself unpacks it into the batch's tensors."""

    def __init__(self, batch: OptionBatch, device):
        self.layout = [(name, t.shape, t.dtype) for name, t in batch.tensors().items()]
        self.flat = flatten(batch).to(device)
        self.graph = torch.cuda.CUDAGraph()
        self.outputs: tuple[torch.Tensor, ...] = ()
        self.grads: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self.template = batch
        self.scale = torch.ones((), device=device)  # a backward's scale, written before each replay

    def batch(self) -> OptionBatch:
        """The static batch: views of the flat buffer, cast where the field is not int64."""
        tensors, offset = {}, 0
        for name, shape, dtype in self.layout:
            n = shape.numel()
            part = self.flat[offset : offset + n].view(shape)
            tensors[name] = part if dtype == torch.int64 else part.to(dtype)
            offset += n
        return self.template.with_tensors(tensors)

    def valid(self) -> bool:
        return all(p.grad is grad for p, grad in self.grads)


def flatten(batch: OptionBatch) -> torch.Tensor:
    return torch.cat([t.reshape(-1).to(torch.int64) for t in batch.tensors().values()])


class ModelCalls:
    """The run's model calls (one object per run); see the module's docstring."""

    def __init__(self, mode: str = "eager", pad_id: int = 0, compile: bool = False):
        if mode not in MODES:
            raise ValueError(f"model-call mode must be one of {MODES}, got {mode!r}")
        if compile and mode == "eager":
            raise ValueError("compiled model calls need static shapes: mode 'static' or 'graphs'")
        self.mode, self.pad_id, self.compile = mode, pad_id, compile
        self._compiled: dict = {}  # function -> its torch.compile wrapper (models that name no blocks)
        # model -> whether its blocks are compiled (else its calls are compiled whole); decided at its first call
        self._regional: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.captures, self.capture_seconds = 0, 0.0
        # id(model) -> (the model, weakly; the hash of its parameters' addresses; its graphs by (kind, args,
        # shape, adapter)). The graphs share one memory pool; once any are dropped, new captures take a
        # new pool (PyTorch refuses to capture into a pool whose graphs are all gone).
        self._graphs: dict[int, tuple[weakref.ref, int, dict]] = {}
        self._pool = None
        self._staged: dict[int, list] = {}  # id(batch) -> [batch, padded, pinned flat copy or None], the last STAGED

    # --- the three calls -----------------------------------------------------------------------

    @torch.no_grad()
    def losses(self, model, batch: OptionBatch | GroupedBatch, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, weights) per example, padded examples last with weight 0 (see losses.example_losses); of
        a GroupedBatch, its real examples in the minibatch's order."""
        if isinstance(batch, GroupedBatch):
            parts = [self.losses(model, group, loss) for group in batch.groups]
            order = batch.order_on(parts[0][0].device)
            return tuple(torch.cat([part[k][: group.examples] for part, group in zip(parts, batch.groups)])[order]
                         for k in (0, 1))
        return self._call("losses", model, batch, (loss,), example_losses)

    @torch.no_grad()
    def scores(self, model, batch: OptionBatch) -> torch.Tensor:
        """[examples, slots] option scores of the real examples, -inf in empty slots."""
        scores = self._call("scores", model, batch, (), _scores)
        return scores[: batch.examples, : batch.slots.shape[1]]

    def backward(self, model, batch: OptionBatch | GroupedBatch, loss: str, scale: float = 1.0) -> torch.Tensor:
        """The batch's mean loss (detached); ∇(scale·loss) is added to the trainable parameters' .grad."""
        if isinstance(batch, GroupedBatch):  # the mean is Σ_g (w_g / w)·mean_g, w_g the weights of group g
            shares = [float(example_weights(group, loss).sum()) for group in batch.groups]
            shares = [share / sum(shares) for share in shares]
            return sum(self.backward(model, group, loss, scale * share) * share
                       for group, share in zip(batch.groups, shares))
        with torch.enable_grad():
            return self._call("backward", model, batch, (loss,), _mean_loss_backward, scale=scale)

    def loss(self, model, batch: OptionBatch | GroupedBatch, loss: str) -> torch.Tensor:
        """The batch's mean loss, no gradient."""
        values, weights = self.losses(model, batch, loss)
        return values.sum() / weights.sum()

    def summary(self) -> dict:
        return {"mode": self.mode, "compile": self.compile, "captures": self.captures,
                "capture_seconds": round(self.capture_seconds, 2)}

    # --- machinery -------------------------------------------------------------------------------

    def _call(self, kind: str, model, batch: OptionBatch, args: tuple, function, scale: float | None = None):
        """function(model, batch, *args[, scale]), eager or padded; from a graph, where `scale` (a backward's)
        is read from the graph's scale tensor, so that the graph serves any scale."""
        device = model.device
        scaled = args if scale is None else (*args, scale)
        if self.mode == "eager":
            return function(model, batch.to(device), *scaled)
        staged = self._staged.get(id(batch))  # an entry keeps its batch alive: no other batch has that id
        if staged is None:
            staged = self._staged[id(batch)] = [batch, batch.padded(batch.shape.bucketed(), self.pad_id), None]
            while len(self._staged) > STAGED:
                del self._staged[next(iter(self._staged))]
        padded = staged[1]
        function = self._compiled_or_plain(function, model)
        if self.mode == "static" or device.type != "cuda":
            return function(model, padded.to(device), *scaled)
        graphs = self._graphs_of(model)
        # peft runs the active adapter's modules, or none inside disable_adapter()
        key = (kind, args, padded.shape, getattr(model, "active_adapter", None), getattr(model, "_adapters_disabled", False))
        graph = graphs.get(key)
        if graph is None or not graph.valid():
            graph = graphs[key] = self._capture(model, padded, args, function, scaled=scale is not None)
        if staged[2] is None:
            staged[2] = flatten(padded).pin_memory()
        graph.flat.copy_(staged[2], non_blocking=True)
        if scale is not None:
            graph.scale.fill_(scale)
        graph.graph.replay()
        outputs = tuple(o.clone() for o in graph.outputs)  # the shared pool is overwritten by the next replay
        return outputs if len(outputs) > 1 else outputs[0]

    def _compiled_or_plain(self, function, model):
        """`function` as it runs with `compile`: plain where the model's blocks are compiled, else compiled whole."""
        if not self.compile:
            return function
        regional = self._regional.get(model)
        if regional is None:  # the model's first call: not on every call (a replay's hot path)
            import torch._dynamo as dynamo  # as a name of its own: `import torch._dynamo` would make torch local here

            dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, RECOMPILE_LIMIT)
            regional = self._regional[model] = compile_blocks(model)
        if regional:
            return function
        if function not in self._compiled:
            self._compiled[function] = torch.compile(function)
        return self._compiled[function]

    def _graphs_of(self, model) -> dict:
        """The model's graphs; none once any of its parameters has moved to other storage."""
        dead = [key for key, (ref, _, _) in self._graphs.items() if ref() is None]
        for key in dead:
            self._drop(key)
        fingerprint = hash(tuple(p.data_ptr() for p in model.parameters()))
        entry = self._graphs.get(id(model))
        if entry is None or entry[0]() is not model or entry[1] != fingerprint:
            if entry is not None:
                self._drop(id(model))
            entry = self._graphs[id(model)] = (weakref.ref(model), fingerprint, {})
        return entry[2]

    def _drop(self, key: int) -> None:
        if self._graphs.pop(key)[2]:
            self._pool = None

    def clear(self) -> None:
        """Release every graph (and so the memory they hold)."""
        self._graphs, self._pool = {}, None

    def _capture(self, model, batch: OptionBatch, args: tuple, function, scaled: bool = False) -> _Graph:
        start = time.perf_counter()
        device = model.device
        make_capturable(model)
        graph = _Graph(batch, device)
        args = (*args, graph.scale) if scaled else args
        trainable = [p for p in model.parameters() if p.requires_grad]
        saved = [None if p.grad is None else p.grad.clone() for p in trainable]
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        # peft builds some tensors with plain torch.ones(...): made on the device, they need no copy
        with torch.cuda.stream(side), torch.device(device):
            for _ in range(WARMUP_RUNS):
                function(model, graph.batch(), *args)
        torch.cuda.current_stream(device).wait_stream(side)
        # The warm-up runs created .grad where there was none and added to the rest: undo that, keeping the
        # tensors, so that the captured backward accumulates into them as a plain backward would.
        for p, grad in zip(trainable, saved):
            if p.grad is not None:
                p.grad.zero_() if grad is None else p.grad.copy_(grad)
        with torch.cuda.graph(graph.graph, pool=self._pool), torch.device(device):
            outputs = function(model, graph.batch(), *args)
        graph.outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        graph.grads = [(p, p.grad) for p in trainable if p.grad is not None]
        torch.cuda.synchronize(device)
        self.captures += 1
        self.capture_seconds += time.perf_counter() - start
        return graph


def step_optimizer(optimizer) -> None:
    """optimizer.step(), then its gradients zeroed in place: a captured backward accumulates into the .grad
    tensors that existed at its capture, so they are kept, never replaced by None."""
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)


def model_calls(config, device, pad_id: int) -> ModelCalls:
    """The run's model calls as configured: graphs, compile (see RunConfig.uses_graphs) and fp32 matmuls on
    TF32 or not (a setting of the process)."""
    torch.backends.cuda.matmul.allow_tf32 = config.tf32
    graphs = config.uses_graphs(device)
    return ModelCalls("graphs" if graphs else "eager", pad_id=pad_id, compile=config.compile)


def repeated_blocks(model) -> list[torch.nn.Module]:
    """The model's blocks: modules of the classes that its transformers model names in _no_split_modules
    (LlamaDecoderLayer, GPT2Block, ...), found through any peft wrapper; [] where none is named."""
    names = next((set(m._no_split_modules) for m in model.modules() if getattr(m, "_no_split_modules", None)), set())
    return [m for m in model.modules() if type(m).__name__ in names]


def compile_blocks(model) -> bool:
    """Compile the model's repeated blocks in place (once); False where it has none."""
    blocks = repeated_blocks(model)
    for block in blocks:
        if getattr(block, "_compiled_call_impl", None) is None:
            block.compile()
    return bool(blocks)


def make_capturable(model) -> None:
    """peft keeps prompt-learning token indices on the CPU and copies them to the device in every forward,
    which a CUDA graph cannot capture: keep them on the model's device."""
    tokens = getattr(model, "prompt_tokens", None)
    if isinstance(tokens, dict):
        for name, t in tokens.items():
            tokens[name] = t.to(model.device)

