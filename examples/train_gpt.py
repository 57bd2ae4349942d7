"""Train a small character-level GPT with torch.optim.AdamW or fusedopt.AdamW.

    python examples/train_gpt.py                          # fusedopt, tiny model, CPU-friendly
    python examples/train_gpt.py --optimizer torch-fused
    python examples/train_gpt.py --compare                # torch-fused vs fusedopt, same seed

    # a mixed-precision step: bf16 params, GradScaler, clipping, fusedopt's fp32 master weights
    python examples/train_gpt.py --compare --dtype bfloat16 --master-weights \
        --max-grad-norm 1.0 --grad-scaler --reference-fp32

The corpus is the source of a few Python standard-library modules, so nothing
is downloaded. Each step prints the loss and the time split into forward +
backward and the optimizer step. Runs are deterministic given --seed.

The training-loop features are what each side offers for the same job:

    --grad-scaler      torch.amp.GradScaler on both sides: scaler.scale(loss).backward(),
                       scaler.step(optimizer), scaler.update(). torch's fused AdamW and
                       fusedopt declare _step_supports_amp_scaling: scaler.step checks the grads
                       for inf/NaN (one pass, unless unscale_ did) and hands them the scale.
    --max-grad-norm X  torch: torch.nn.utils.clip_grad_norm_(model.parameters(), X) before the
                       step, after scaler.unscale_(optimizer) with --grad-scaler (separate
                       passes over the grads). fusedopt: AdamW(max_grad_norm=X), which clips
                       (and unscales) inside its step, so scaler.unscale_ is never called.
    --master-weights   fusedopt: AdamW(master_weights=True), an fp32 copy of 16-bit params and
                       fp32 moments. torch.optim has no master weights: its AdamW updates the
                       16-bit params (and keeps 16-bit moments) directly.

The "optimizer" time of a step is everything after backward: unscale_, clipping, the step,
scaler.update() and zero_grad(), synchronised on CUDA before and after.
"""
import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import fusedopt

OPTIMIZERS = ("torch-foreach", "torch-fused", "fusedopt")
CORPUS_FILES = ("argparse.py", "textwrap.py", "string.py", "dataclasses.py", "functools.py")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------- data

class CharCorpus:
    """Standard-library source text, encoded one token per character."""

    def __init__(self):
        stdlib = Path(os.__file__).parent
        text = "".join((stdlib / name).read_text(encoding="utf-8") for name in CORPUS_FILES)
        self.vocab = sorted(set(text))
        index = {char: position for position, char in enumerate(self.vocab)}
        self.tokens = torch.tensor([index[char] for char in text], dtype=torch.long)

    def batch(self, batch_size: int, block_size: int, generator: torch.Generator):
        """Random windows of the text; targets are the inputs shifted by one character."""
        starts = torch.randint(len(self.tokens) - block_size - 1, (batch_size,), generator=generator)
        inputs = torch.stack([self.tokens[start : start + block_size] for start in starts])
        targets = torch.stack([self.tokens[start + 1 : start + block_size + 1] for start in starts])
        return inputs, targets


# --------------------------------------------------------------------------- model

@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time_steps, channels = x.shape
        q, k, v = self.qkv(x).split(channels, dim=2)
        q, k, v = (t.view(batch, time_steps, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, time_steps, channels))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.down = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight  # tied, as in GPT-2
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


# --------------------------------------------------------------------------- training

@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "fusedopt"
    backend: str = "auto"
    steps: int = 200
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    block_size: int = 64
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_steps: int = 10
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    master_weights: bool = False  # fusedopt only: fp32 master copy and moments of 16-bit params
    max_grad_norm: Optional[float] = None  # clip the global L2 norm of the grads
    grad_scaler: bool = False  # torch.amp.GradScaler

    @property
    def features(self) -> List[str]:
        """The training-loop features turned on, in words (empty by default)."""
        named = []
        if self.master_weights:
            named.append("master weights (fusedopt only)"
                         + (": no effect on float32 params" if self.dtype == "float32" else ""))
        if self.max_grad_norm is not None:
            named.append(f"max_grad_norm {self.max_grad_norm}")
        if self.grad_scaler:
            named.append("GradScaler")
        return named


@dataclass
class TrainResult:
    losses: List[float] = field(default_factory=list)
    forward_backward_ms: List[float] = field(default_factory=list)
    optimizer_ms: List[float] = field(default_factory=list)
    optimizer: Optional[torch.optim.Optimizer] = field(default=None, repr=False)  # after the last step


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices and embeddings only (nanoGPT's grouping)."""
    params = [param for param in model.parameters() if param.requires_grad]
    groups = [
        {"params": [param for param in params if param.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [param for param in params if param.dim() < 2], "weight_decay": 0.0},
    ]
    hyper = dict(lr=config.lr, betas=(0.9, 0.95), eps=1e-8)
    if config.optimizer == "torch-foreach":
        return torch.optim.AdamW(groups, foreach=True, **hyper)
    if config.optimizer == "torch-fused":
        return torch.optim.AdamW(groups, fused=True, **hyper)
    return fusedopt.AdamW(groups, backend=config.backend, master_weights=config.master_weights,
                          max_grad_norm=config.max_grad_norm, **hyper)


def clips_outside_the_step(config: TrainConfig) -> bool:
    """torch.optim clips with clip_grad_norm_ between backward and step; fusedopt inside its step."""
    return config.max_grad_norm is not None and config.optimizer != "fusedopt"


def after_backward(model: nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: Optional[torch.amp.GradScaler], config: TrainConfig) -> None:
    """Everything a training step does after backward: this is what the "optimizer" time measures."""
    if clips_outside_the_step(config):
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip_grad_norm_ must see the unscaled grads
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)  # fusedopt (and torch's fused AdamW) unscale inside the step
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def after_backward_calls(config: TrainConfig) -> str:
    """What after_backward runs for this configuration, in words."""
    calls = []
    if clips_outside_the_step(config):
        if config.grad_scaler:
            calls.append("scaler.unscale_")
        calls.append(f"clip_grad_norm_({config.max_grad_norm})")
    calls += ["scaler.step", "scaler.update"] if config.grad_scaler else ["step"]
    calls.append("zero_grad")
    inside = [name for name, on in (("unscale", config.grad_scaler),
                                    ("clip", config.max_grad_norm is not None)) if on]
    if config.optimizer == "fusedopt" and inside:
        return " + ".join(calls) + f" ({' and '.join(inside)} inside the step)"
    return " + ".join(calls)


def train(config: TrainConfig, corpus: CharCorpus, on_step: Optional[Callable] = None) -> TrainResult:
    """Train from scratch; ``on_step(step, result)`` is called after every step."""
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model_config = ModelConfig(
        len(corpus.vocab), config.block_size, config.n_layer, config.n_head, config.n_embd
    )
    model = GPT(model_config).to(device=device, dtype=DTYPES[config.dtype])
    optimizer = make_optimizer(model, config)
    warmup = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / config.warmup_steps)
    )
    scaler = torch.amp.GradScaler(device.type) if config.grad_scaler else None
    batches = torch.Generator().manual_seed(config.seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    result = TrainResult(optimizer=optimizer)
    for step in range(config.steps):
        inputs, targets = (t.to(device) for t in corpus.batch(config.batch_size, config.block_size, batches))
        sync()
        start = time.perf_counter()
        loss = model(inputs, targets)
        (loss if scaler is None else scaler.scale(loss)).backward()
        sync()
        middle = time.perf_counter()
        after_backward(model, optimizer, scaler, config)
        sync()
        end = time.perf_counter()
        warmup.step()
        result.losses.append(loss.item())
        result.forward_backward_ms.append((middle - start) * 1e3)
        result.optimizer_ms.append((end - middle) * 1e3)
        if on_step:
            on_step(step, result)
    return result


# --------------------------------------------------------------------------- command line

def print_step(step: int, result: TrainResult) -> None:
    print(f"step {step:4d}  loss {result.losses[-1]:.4f}"
          f"  forward+backward {result.forward_backward_ms[-1]:8.2f} ms"
          f"  optimizer {result.optimizer_ms[-1]:7.3f} ms")


def median_step_ms(result: TrainResult) -> float:
    # The first steps allocate optimizer state and warm caches; leave them out.
    return statistics.median(result.optimizer_ms[_warm_steps(result):])


def _warm_steps(result: TrainResult) -> int:
    return min(5, len(result.losses) - 1)


def print_timing_summary(name: str, result: TrainResult, config: Optional[TrainConfig] = None) -> None:
    """With `config` using any training-loop feature, also says what the optimizer time covers."""
    skip = _warm_steps(result)
    print(f"{name}: median forward+backward {statistics.median(result.forward_backward_ms[skip:]):.2f} ms,"
          f" optimizer step {median_step_ms(result):.3f} ms (steps {skip}..{len(result.losses) - 1})")
    if config is not None and config.features:
        print(f"    optimizer step = everything after backward: {after_backward_calls(config)}")


def uses_master_weights(config: TrainConfig) -> bool:
    return config.master_weights and config.dtype != "float32"


def compare(config: TrainConfig, corpus: CharCorpus, reference_fp32: bool = False) -> None:
    """Train with torch-fused and fusedopt from the same seed and print both loss curves;
    with `reference_fp32`, also a float32 torch-fused run each is measured against."""
    torch_config = replace(config, optimizer="torch-fused")
    fusedopt_config = replace(config, optimizer="fusedopt")
    reference_config = replace(torch_config, dtype="float32", master_weights=False)
    if config.features:
        print(f"compare, same seed, {config.dtype} params, {', '.join(config.features)}:")
        arguments = ["master_weights=True"] * config.master_weights
        if config.max_grad_norm is not None:
            arguments.append(f"max_grad_norm={config.max_grad_norm}")
        print(f"  torch-fused: torch.optim.AdamW(fused=True) on the {config.dtype} params;"
              f" after backward: {after_backward_calls(torch_config)}")
        print(f"  fusedopt:    fusedopt.AdamW({', '.join(arguments)}) on the {config.dtype} params;"
              f" after backward: {after_backward_calls(fusedopt_config)}")
    runs = {"torch-fused": train(torch_config, corpus), "fusedopt": train(fusedopt_config, corpus)}
    for run in runs.values():
        run.optimizer = None  # free its state before the next run
    reference = None
    if reference_fp32:
        print(f"  fp32 reference: torch.optim.AdamW(fused=True) on float32 params;"
              f" after backward: {after_backward_calls(reference_config)}")
        reference = train(reference_config, corpus)
        reference.optimizer = None
    torch_run, fusedopt_run = runs["torch-fused"], runs["fusedopt"]
    print(f"{'step':>4}  {'loss torch-fused':>16}  {'loss fusedopt':>14}  {'|difference|':>12}"
          f"  {'step ms torch-fused':>19}  {'step ms fusedopt':>16}" + (f"  {'loss fp32':>10}" if reference else ""))
    for step in range(config.steps):
        a, b = torch_run.losses[step], fusedopt_run.losses[step]
        print(f"{step:4d}  {a:16.6f}  {b:14.6f}  {abs(a - b):12.3e}"
              f"  {torch_run.optimizer_ms[step]:19.3f}  {fusedopt_run.optimizer_ms[step]:16.3f}"
              + (f"  {reference.losses[step]:10.6f}" if reference else ""))
    difference = max_abs_difference(torch_run.losses, fusedopt_run.losses)
    if uses_master_weights(config):
        print(f"max |loss difference| over {config.steps} steps: {difference:.3e} (the curves are not"
              f" expected to match: fusedopt updates fp32 master weights, torch-fused the {config.dtype}"
              " params themselves" + ("" if reference else "; --reference-fp32 shows which tracks float32") + ")")
    else:
        print(f"max |loss difference| over {config.steps} steps: {difference:.3e}")
    if reference:
        for name, run in runs.items():
            print(f"{name} vs the fp32 run: max |loss - fp32 loss| {max_abs_difference(run.losses, reference.losses):.3e},"
                  f" mean {mean_abs_difference(run.losses, reference.losses):.3e}")
    print_timing_summary("torch-fused", torch_run, torch_config)
    print_timing_summary("fusedopt", fusedopt_run, fusedopt_config)
    print(f"optimizer step: fusedopt takes {median_step_ms(fusedopt_run) / median_step_ms(torch_run):.2f}x"
          " the time of torch.optim.AdamW(fused=True) (the runs are consecutive; bench/ times side by side)")


def max_abs_difference(a: Sequence[float], b: Sequence[float]) -> float:
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def mean_abs_difference(a: Sequence[float], b: Sequence[float]) -> float:
    differences = [abs(x - y) for x, y in zip(a, b)]
    return sum(differences) / len(differences) if differences else 0.0


def parse_arguments(argv: Optional[Sequence[str]]) -> Tuple[TrainConfig, bool, bool]:
    """The training configuration, and whether --compare and --reference-fp32 were given."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer)
    parser.add_argument("--backend", default=defaults.backend, help="fusedopt backend (default: auto)")
    parser.add_argument("--compare", action="store_true",
                        help="run torch-fused and fusedopt from the same seed and compare losses")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default=defaults.dtype)
    for name in ("steps", "n_layer", "n_head", "n_embd", "block_size", "batch_size", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--master-weights", action="store_true",
                        help="fusedopt: fp32 master weights and moments for 16-bit params"
                             " (torch.optim has none: its AdamW updates the 16-bit params)")
    parser.add_argument("--max-grad-norm", type=float, default=None, metavar="X",
                        help="clip the gradients' global L2 norm to X (torch: clip_grad_norm_ before"
                             " the step; fusedopt: max_grad_norm=X, inside the step)")
    parser.add_argument("--grad-scaler", action="store_true", help="use torch.amp.GradScaler on both sides")
    parser.add_argument("--reference-fp32", action="store_true",
                        help="with --compare: also train torch-fused on float32 params (same clipping"
                             " and scaler) and print each run's distance to its loss curve")
    options = parser.parse_args(argv)
    if options.n_embd % options.n_head:
        parser.error("--n-embd must be a multiple of --n-head")
    if options.max_grad_norm is not None and not options.max_grad_norm > 0:
        parser.error("--max-grad-norm must be positive")
    compare_requested = vars(options).pop("compare")
    reference_fp32 = vars(options).pop("reference_fp32")
    if reference_fp32 and not compare_requested:
        parser.error("--reference-fp32 needs --compare")
    return TrainConfig(**vars(options)), compare_requested, reference_fp32


def main(argv: Optional[Sequence[str]] = None) -> int:
    config, compare_requested, reference_fp32 = parse_arguments(argv)
    corpus = CharCorpus()
    features = f"; features: {', '.join(config.features)}" if config.features else ""
    print(f"corpus: {len(corpus.tokens):,} characters, vocabulary {len(corpus.vocab)};"
          f" model: {config.n_layer} layers, {config.n_head} heads, n_embd {config.n_embd},"
          f" block {config.block_size}, batch {config.batch_size}; {config.device} {config.dtype}{features}")
    if compare_requested:
        compare(config, corpus, reference_fp32)
    else:
        result = train(config, corpus, on_step=print_step)
        print_timing_summary(config.optimizer, result, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
