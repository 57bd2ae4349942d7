"""bf16 optimizer states against float32 states on a small GPT (CPU, fixed seed).

    python examples/low_precision_states.py [--steps 300] [--plot curves.png] [--bf16-params] [--int8]
                                            [--schedule cosine] [--seeds 0,1,2]

Trains the character-level GPT of examples/train_gpt.py twice from the same seed and data,
with fusedopt.AdamW(state_dtype=None) (float32 moments) and state_dtype=torch.bfloat16, and
prints both final losses and their relative difference (issue 13's bar: within 0.5%). The
final loss is the trained model's mean loss on 16 fixed batches of 32 windows, the same for
every run (a one-batch training loss swings by more than the bar from step to step); the mean
training loss of the last 20 steps is printed beside it. It also measures the optimizer-state bytes per parameter of Adam from
the state_dict's tensors, step counters included (bar for bf16 states: <= 4.1). With
matplotlib installed, --plot saves the loss curves.

--bf16-params adds two runs of pure bf16 training (the model's params in bfloat16, no master
copy, float32 states): torch.optim.AdamW, whose round-to-nearest loses updates smaller than
half a bf16 ulp, and fusedopt.AdamW(bf16_stochastic_round=True); it prints how far each final
loss lies from the float32 run's (issue 13's bar: the stochastic-rounding run the closer).

--int8 adds a run with 8-bit states (state_dtype="int8": blockwise dynamic quantization of
every moment of 4,096 elements or more) and prints its final loss's relative difference from
the float32 run's (issue 13's bar: within 1%). --bitsandbytes adds a run with
bitsandbytes.optim.AdamW8bit (Dettmers et al.'s own 8-bit Adam, which runs on the CPU too) for
comparison, if it is installed.

--seeds 0,1,2 repeats every run for each seed (model init and batches) and prints each seed's
relative differences and their mean: one seed's final loss moves by about 1% with any change
of rounding (float32 with one torch thread against two: 0.4%), as large as the bars.
--rounding-floor adds that yardstick as a run: float32 states again, on the reference backend
(the same math in torch ops, which round a few last bits differently from the cpu kernels), so
its difference from the fp32 run is what a change of rounding alone does to the final loss.

--schedule cosine trains with the usual GPT learning-rate schedule instead of a constant 3e-3:
linear warmup over 10 steps (train_gpt.py's), then a cosine decay to a tenth of the peak at the
last step (nanoGPT's min_lr). The final loss is then read after the learning rate has come down,
where runs that differ in rounding land closer together: over ten seeds at torch's betas the
rounding floor above shrank from a mean |difference| of 0.39% (largest 1.03%) to 0.12% (largest
0.66%), so the bars compare more of what the state dtype does and less of where a run's last
large steps happened to leave it (bench/results/low-precision-states-cosine.txt).

--beta2 sets Adam's second-moment decay in every run (default torch's 0.999). bf16 cannot follow
a decay above 1 - 2**-8 (fusedopt warns): at 0.999 a bf16 second moment never comes down from
its largest value. --beta2 0.99 compares bf16 and float32 states where bf16 can follow.
"""
import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fusedopt  # noqa: E402
from train_gpt import GPT, CharCorpus, ModelConfig  # noqa: E402


def _tensor_bytes(value) -> int:
    """Bytes of the tensors in a state entry (bitsandbytes nests its tensors in a dict)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    return 0


def state_bytes_per_param(optimizer: torch.optim.Optimizer) -> float:
    params = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    return _tensor_bytes(optimizer.state_dict()["state"]) / params


@torch.no_grad()
def evaluation_loss(model: GPT, corpus: CharCorpus, config: ModelConfig, batches: int = 16) -> float:
    generator = torch.Generator().manual_seed(1234)
    losses = [model(*corpus.batch(32, config.block_size, generator)).float().item() for _ in range(batches)]
    return sum(losses) / batches


SCHEDULES = ("constant", "cosine")
WARMUP_STEPS = 10  # train_gpt.py's
FINAL_LR_FRACTION = 0.1  # nanoGPT's min_lr = lr / 10


def lr_factor(schedule: str, steps: int):
    """The learning-rate multiplier of each step, for torch.optim.lr_scheduler.LambdaLR."""
    if schedule == "constant":
        return lambda step: 1.0

    def cosine(step: int) -> float:
        if step < WARMUP_STEPS:
            return (step + 1) / WARMUP_STEPS
        progress = (step - WARMUP_STEPS) / max(1, steps - 1 - WARMUP_STEPS)
        return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cosine


def train(state_dtype, steps: int, seed: int, corpus: CharCorpus, config: ModelConfig, param_dtype=None,
          optimizer_class=None, backend="cpu", schedule="constant", beta2=0.999, **options):
    torch.manual_seed(seed)
    model = GPT(config)
    if param_dtype is not None:
        model = model.to(param_dtype)
    if optimizer_class is None:
        optimizer = fusedopt.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, beta2),
                                   state_dtype=state_dtype,
                                   backend=backend, **options)
    else:
        optimizer = optimizer_class(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, beta2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(schedule, steps))
    generator = torch.Generator().manual_seed(seed + 1)
    losses = []
    for _ in range(steps):
        inputs, targets = corpus.batch(16, config.block_size, generator)
        loss = model(inputs, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(loss.item())
    return losses, state_bytes_per_param(optimizer), evaluation_loss(model, corpus, config)


# The runs compared with the fp32 run's final loss: name, how the line names it, the bar.
COMPARED_RUNS = (
    ("bf16 states", "", " (bar: <= 0.5%)"),
    ("int8 states", ", int8 states", " (bar: <= 1%)"),
    ("fp32 states, reference backend", ", fp32 states on the reference backend (rounding alone)", ""),
    ("bitsandbytes AdamW8bit", ", bitsandbytes AdamW8bit", ""),
)


def report(runs: dict, prefix: str = "") -> dict:
    """Prints each run's final losses and the bars' comparisons; returns {name: signed relative
    difference of its final loss from the fp32 run's} for every run but the fp32 one."""
    final = {name: evaluation for name, (_, _, evaluation) in runs.items()}
    for name, (losses, per_param, evaluation) in runs.items():
        last = losses[-20:]  # fewer in runs under 20 steps
        print(f"{prefix}{name}: final loss (16 fixed batches) {evaluation:.4f}, training loss (mean of last "
              f"{len(last)} steps) {sum(last) / len(last):.4f}, optimizer state {per_param:.3f} bytes/param")
    for name, label, bar in COMPARED_RUNS:
        if name in final:
            difference = abs(final[name] - final["fp32 states"]) / final["fp32 states"]
            print(f"{prefix}relative difference of final losses{label}: {100 * difference:.3f}%{bar}")
    if "bf16 params, stochastic rounding" in final:
        gaps = {name: final[name] - final["fp32 states"] for name in final if name.startswith("bf16 params")}
        for name, gap in gaps.items():
            print(f"{prefix}{name}: final loss - fp32 run's = {gap:+.4f}")
        closer = abs(gaps["bf16 params, stochastic rounding"]) < abs(gaps["bf16 params, torch.optim.AdamW"])
        print(f"{prefix}stochastic rounding closer to the fp32 run than torch.optim in bf16: {closer}")
    return {name: (value - final["fp32 states"]) / final["fp32 states"]
            for name, value in final.items() if name != "fp32 states"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="save the loss curves to this PNG (needs matplotlib)")
    parser.add_argument("--bf16-params", action="store_true",
                        help="also train pure bf16 params: torch.optim.AdamW and bf16_stochastic_round=True")
    parser.add_argument("--only-bf16-params", action="store_true",
                        help="the fp32-state run and the two pure-bf16 runs only (no bf16-state run)")
    parser.add_argument("--int8", action="store_true", help="also train with 8-bit states (state_dtype='int8')")
    parser.add_argument("--no-bf16-states", action="store_true", help="leave out the bf16-state run")
    parser.add_argument("--bitsandbytes", action="store_true",
                        help="also train with bitsandbytes.optim.AdamW8bit (if installed)")
    parser.add_argument("--rounding-floor", action="store_true",
                        help="also train float32 states on the reference backend: the spread rounding alone gives")
    parser.add_argument("--schedule", choices=SCHEDULES, default="constant",
                        help="the learning rate: constant 3e-3 (default), or warmup and cosine decay to 3e-4")
    parser.add_argument("--beta2", type=float, default=0.999,
                        help="Adam's second-moment decay in every run (default 0.999, torch's)")
    parser.add_argument("--seeds", default=None, metavar="S,S,...",
                        help="comma-separated seeds, each run once per seed (default: --seed)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    corpus = CharCorpus()
    config = ModelConfig(vocab_size=len(corpus.vocab), block_size=64, n_layer=2, n_head=4, n_embd=128)
    runs = {}
    plans = [("fp32 states", dict(state_dtype=None))]
    if not args.only_bf16_params and not args.no_bf16_states:
        plans.append(("bf16 states", dict(state_dtype=torch.bfloat16)))
    if args.int8:
        plans.append(("int8 states", dict(state_dtype="int8")))
    if args.bf16_params or args.only_bf16_params:
        plans += [("bf16 params, torch.optim.AdamW", dict(state_dtype=None, param_dtype=torch.bfloat16,
                                                          optimizer_class=torch.optim.AdamW)),
                  ("bf16 params, stochastic rounding", dict(state_dtype=None, param_dtype=torch.bfloat16,
                                                            bf16_stochastic_round=True))]
    if args.rounding_floor:
        plans.append(("fp32 states, reference backend", dict(state_dtype=None, backend="reference")))
    if args.bitsandbytes:
        try:
            import bitsandbytes
            plans.append(("bitsandbytes AdamW8bit", dict(state_dtype=None,
                                                         optimizer_class=bitsandbytes.optim.AdamW8bit)))
        except ImportError:
            print("bitsandbytes is not installed: no bitsandbytes run")
    seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else [args.seed]
    print(f"{args.steps} steps, betas (0.9, {args.beta2}), learning rate " + (
        "3e-3 throughout" if args.schedule == "constant" else
        f"warmed up over {WARMUP_STEPS} steps to 3e-3, then cosine-decayed to {3e-3 * FINAL_LR_FRACTION:.0e}"))
    differences = {}  # name -> [relative difference from the fp32 run's final loss, per seed]
    for seed in seeds:
        runs_of_seed = {}
        for name, plan in plans:
            plan = dict(plan)
            runs_of_seed[name] = train(plan.pop("state_dtype"), args.steps, seed, corpus, config,
                                       schedule=args.schedule, beta2=args.beta2, **plan)
        if seed == seeds[0]:
            runs = runs_of_seed  # the plotted curves
        for name, difference in report(runs_of_seed, f"seed {seed}, " if len(seeds) > 1 else "").items():
            differences.setdefault(name, []).append(difference)
    if len(seeds) > 1:
        for name, values in differences.items():
            mean = sum(values) / len(values)
            spread = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
            print(f"{name}: relative difference of final losses from the fp32 run's, mean over {len(seeds)} seeds "
                  f"{100 * mean:+.3f}% (standard error {100 * spread / len(values) ** 0.5:.3f}%), "
                  f"mean |difference| {100 * sum(map(abs, values)) / len(values):.3f}%, largest "
                  f"{100 * max(map(abs, values)):.3f}% (per seed: {', '.join(f'{100 * v:+.2f}%' for v in values)})")
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot")
            return
        for name, (losses, _, _) in runs.items():
            plt.plot(losses, label=name)
        plt.xlabel("step")
        plt.ylabel("loss")
        plt.legend()
        plt.savefig(args.plot, dpi=100)
        print(f"saved {args.plot}")


if __name__ == "__main__":
    main()
