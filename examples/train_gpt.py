"""Train a small character-level GPT with torch.optim.AdamW or fusedopt.AdamW.

    python examples/train_gpt.py                          # fusedopt, tiny model, CPU-friendly
    python examples/train_gpt.py --optimizer torch-fused
    python examples/train_gpt.py --compare                # torch-fused vs fusedopt, same seed

The corpus is the source of a few Python standard-library modules, so nothing
is downloaded. Each step prints the loss and the time split into forward +
backward and the optimizer step. Runs are deterministic given --seed.
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


@dataclass
class TrainResult:
    losses: List[float] = field(default_factory=list)
    forward_backward_ms: List[float] = field(default_factory=list)
    optimizer_ms: List[float] = field(default_factory=list)


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
    return fusedopt.AdamW(groups, backend=config.backend, **hyper)


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
    batches = torch.Generator().manual_seed(config.seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    result = TrainResult()
    for step in range(config.steps):
        inputs, targets = (t.to(device) for t in corpus.batch(config.batch_size, config.block_size, batches))
        sync()
        start = time.perf_counter()
        loss = model(inputs, targets)
        loss.backward()
        sync()
        middle = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
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


def print_timing_summary(name: str, result: TrainResult) -> None:
    skip = _warm_steps(result)
    print(f"{name}: median forward+backward {statistics.median(result.forward_backward_ms[skip:]):.2f} ms,"
          f" optimizer step {median_step_ms(result):.3f} ms (steps {skip}..{len(result.losses) - 1})")


def compare(config: TrainConfig, corpus: CharCorpus) -> None:
    """Train with torch-fused and fusedopt from the same seed and print both loss curves."""
    torch_run = train(replace(config, optimizer="torch-fused"), corpus)
    fusedopt_run = train(replace(config, optimizer="fusedopt"), corpus)
    print(f"{'step':>4}  {'loss torch-fused':>16}  {'loss fusedopt':>14}  {'|difference|':>12}"
          f"  {'step ms torch-fused':>19}  {'step ms fusedopt':>16}")
    for step in range(config.steps):
        a, b = torch_run.losses[step], fusedopt_run.losses[step]
        print(f"{step:4d}  {a:16.6f}  {b:14.6f}  {abs(a - b):12.3e}"
              f"  {torch_run.optimizer_ms[step]:19.3f}  {fusedopt_run.optimizer_ms[step]:16.3f}")
    difference = max_abs_difference(torch_run.losses, fusedopt_run.losses)
    print(f"max |loss difference| over {config.steps} steps: {difference:.3e}")
    print_timing_summary("torch-fused", torch_run)
    print_timing_summary("fusedopt", fusedopt_run)
    print(f"optimizer step: fusedopt takes {median_step_ms(fusedopt_run) / median_step_ms(torch_run):.2f}x"
          " the time of torch.optim.AdamW(fused=True) (the runs are consecutive; bench/ times side by side)")


def max_abs_difference(a: Sequence[float], b: Sequence[float]) -> float:
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def parse_arguments(argv: Optional[Sequence[str]]) -> Tuple[TrainConfig, bool]:
    """The training configuration, and whether --compare was given."""
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
    options = parser.parse_args(argv)
    if options.n_embd % options.n_head:
        parser.error("--n-embd must be a multiple of --n-head")
    compare_requested = vars(options).pop("compare")
    return TrainConfig(**vars(options)), compare_requested


def main(argv: Optional[Sequence[str]] = None) -> int:
    config, compare_requested = parse_arguments(argv)
    corpus = CharCorpus()
    print(f"corpus: {len(corpus.tokens):,} characters, vocabulary {len(corpus.vocab)};"
          f" model: {config.n_layer} layers, {config.n_head} heads, n_embd {config.n_embd},"
          f" block {config.block_size}, batch {config.batch_size}; {config.device} {config.dtype}")
    if compare_requested:
        compare(config, corpus)
    else:
        result = train(config, corpus, on_step=print_step)
        print_timing_summary(config.optimizer, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
