"""examples/train_gpt.py: fusedopt trains the example GPT exactly as torch's fused AdamW does."""
import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch

import fusedopt

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_gpt.py"
SMALL = dict(steps=8, n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, warmup_steps=3)


def load_example():
    spec = importlib.util.spec_from_file_location("train_gpt", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_gpt = load_example()


@pytest.fixture(scope="module")
def corpus():
    return train_gpt.CharCorpus()


@pytest.fixture(scope="module")
def torch_fused_losses(corpus):
    return train_gpt.train(train_gpt.TrainConfig(optimizer="torch-fused", **SMALL), corpus).losses


@pytest.mark.parametrize("backend", ["auto", "cpu", "reference"])
def test_fusedopt_losses_equal_torch_fused(backend, corpus, torch_fused_losses):
    if backend != "auto" and backend not in fusedopt.available_backends(torch.device("cpu")):
        pytest.skip(f"fusedopt backend {backend!r} is not available on the CPU")
    config = train_gpt.TrainConfig(optimizer="fusedopt", backend=backend, **SMALL)
    losses = train_gpt.train(config, corpus).losses
    assert losses[0] == torch_fused_losses[0]  # same seed, same model, no update yet
    # Same math in float32; only the rounding order of the updates may differ.
    torch.testing.assert_close(losses, torch_fused_losses, rtol=1e-5, atol=1e-6)


def test_training_is_deterministic_and_learns(corpus, torch_fused_losses):
    again = train_gpt.train(train_gpt.TrainConfig(optimizer="torch-fused", **SMALL), corpus).losses
    assert again == torch_fused_losses
    assert min(torch_fused_losses[-3:]) < torch_fused_losses[0]


def test_torch_foreach_matches_torch_fused(corpus, torch_fused_losses):
    config = train_gpt.TrainConfig(optimizer="torch-foreach", **SMALL)
    losses = train_gpt.train(config, corpus).losses
    torch.testing.assert_close(losses, torch_fused_losses, rtol=1e-5, atol=1e-6)


def test_compare_prints_both_loss_curves_and_their_difference(capsys):
    arguments = ["--compare", "--steps", "3", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
                 "--block-size", "16", "--batch-size", "2"]
    assert train_gpt.main(arguments) == 0
    out = capsys.readouterr().out
    assert "loss torch-fused" in out and "loss fusedopt" in out
    assert "max |loss difference| over 3 steps:" in out
    assert "torch-fused: median forward+backward" in out and "fusedopt: median forward+backward" in out


def test_default_run_prints_loss_and_step_timing(capsys):
    arguments = ["--optimizer", "torch-foreach", "--steps", "2", "--n-layer", "1", "--n-head", "2",
                 "--n-embd", "16", "--block-size", "16", "--batch-size", "2"]
    assert train_gpt.main(arguments) == 0
    lines = capsys.readouterr().out.splitlines()
    first_step = lines[1]
    assert first_step.startswith("step    0  loss ")
    assert "forward+backward" in first_step and "optimizer" in first_step


def test_head_is_tied_to_the_token_embedding(corpus):
    config = train_gpt.ModelConfig(vocab_size=len(corpus.vocab), block_size=8, n_layer=1, n_head=1, n_embd=8)
    model = train_gpt.GPT(config)
    assert model.head.weight is model.token_embedding.weight
    names = [name for name, _ in model.named_parameters()]
    assert "head.weight" not in names  # counted, and optimized, once


# --------------------------------------------------------------------------- training-loop features
# --master-weights, --max-grad-norm, --grad-scaler: what each side offers for the same job.

TINY_ARGUMENTS = ["--steps", "3", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
                  "--batch-size", "2"]
ALL_FEATURES = ["--dtype", "bfloat16", "--master-weights", "--max-grad-norm", "0.5", "--grad-scaler"]


def test_features_are_off_by_default():
    config, compare_requested, reference_fp32 = train_gpt.parse_arguments([])
    assert config == train_gpt.TrainConfig(device=config.device)
    assert (config.master_weights, config.max_grad_norm, config.grad_scaler) == (False, None, False)
    assert config.features == [] and not compare_requested and not reference_fp32


@pytest.mark.parametrize("optimizer", train_gpt.OPTIMIZERS)
def test_every_feature_runs_end_to_end(optimizer, capsys):
    assert train_gpt.main(["--optimizer", optimizer, *ALL_FEATURES, *TINY_ARGUMENTS]) == 0
    out = capsys.readouterr().out
    assert "features: master weights (fusedopt only), max_grad_norm 0.5, GradScaler" in out.splitlines()[0]
    assert "step    2  loss " in out
    # The optimizer time covers everything after backward, and the summary says what that is.
    if optimizer == "fusedopt":
        expected = "scaler.step + scaler.update + zero_grad (unscale and clip inside the step)"
    else:
        expected = "scaler.unscale_ + clip_grad_norm_(0.5) + scaler.step + scaler.update + zero_grad"
    assert f"optimizer step = everything after backward: {expected}" in out


def test_compare_with_every_feature_and_an_fp32_reference(capsys):
    assert train_gpt.main(["--compare", "--reference-fp32", *ALL_FEATURES, *TINY_ARGUMENTS]) == 0
    out = capsys.readouterr().out
    assert "compare, same seed, bfloat16 params, master weights (fusedopt only), max_grad_norm 0.5, GradScaler:" in out
    assert "fusedopt.AdamW(master_weights=True, max_grad_norm=0.5) on the bfloat16 params" in out
    assert "max |loss difference| over 3 steps:" in out and "not expected to match" in out
    assert "torch-fused vs the fp32 run: max |loss - fp32 loss|" in out
    assert "fusedopt vs the fp32 run: max |loss - fp32 loss|" in out
    assert "fusedopt takes" in out


def test_reference_fp32_needs_compare():
    with pytest.raises(SystemExit):
        train_gpt.parse_arguments(["--reference-fp32"])


def test_unscale_and_clip_run_outside_the_step_for_torch_only(corpus, monkeypatch):
    """torch: scaler.unscale_ then clip_grad_norm_ then scaler.step; fusedopt: scaler.step alone
    (it unscales and clips inside its step; unscale_ before it would unscale twice)."""
    calls = []
    for owner, name in ((torch.amp.GradScaler, "unscale_"), (torch.amp.GradScaler, "step"),
                        (torch.amp.GradScaler, "update"), (torch.nn.utils, "clip_grad_norm_")):
        original = getattr(owner, name)

        def recording(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, recording)
    features = dict(grad_scaler=True, max_grad_norm=0.5, **dict(SMALL, steps=2))
    train_gpt.train(train_gpt.TrainConfig(optimizer="torch-fused", **features), corpus)
    assert calls == ["unscale_", "clip_grad_norm_", "step", "update"] * 2
    calls.clear()
    train_gpt.train(train_gpt.TrainConfig(optimizer="fusedopt", **features), corpus)
    assert calls == ["step", "update"] * 2


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_grad_scaler_and_clipping_match_torch_fused_in_float32(backend, corpus):
    # Same math on both sides: the scale is a power of two (unscaling is exact) and both clip
    # with max_norm / (norm + 1e-6); torch sums the norm in float32, fusedopt in float64, so
    # the clip coefficient may differ in its last bit. Over 8 to 30 steps and 5 seeds the loss
    # curves differed by at most 9.5e-7 (2 float32 ulps at a loss of 4), most steps exactly
    # equal: the tolerance of the tests above (rtol 1e-5, atol 1e-6, i.e. ~4e-5 here) holds
    # with a wide margin, and is far below what dropping the clip changes (>= 1.3e-3).
    features = dict(grad_scaler=True, max_grad_norm=0.5, **SMALL)
    torch_losses = train_gpt.train(train_gpt.TrainConfig(optimizer="torch-fused", **features), corpus).losses
    config = train_gpt.TrainConfig(optimizer="fusedopt", backend=backend, **features)
    losses = train_gpt.train(config, corpus).losses
    torch.testing.assert_close(losses, torch_losses, rtol=1e-5, atol=1e-6)
    unclipped = train_gpt.train(train_gpt.TrainConfig(optimizer="fusedopt", grad_scaler=True, **SMALL), corpus).losses
    assert train_gpt.max_abs_difference(unclipped, torch_losses) > 1e-4  # the clip is active


def test_master_weights_keep_float32_state_for_bfloat16_params(corpus):
    config = train_gpt.TrainConfig(optimizer="fusedopt", dtype="bfloat16", master_weights=True,
                                   grad_scaler=True, max_grad_norm=0.5, **SMALL)
    result = train_gpt.train(config, corpus)
    assert len(result.losses) == SMALL["steps"] and all(map(math.isfinite, result.losses))
    optimizer = result.optimizer
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert params and all(p.dtype == torch.bfloat16 for p in params)
    for p in params:
        state = optimizer.state[p]
        assert state["master_param"].dtype == torch.float32
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
        assert torch.equal(p, state["master_param"].to(torch.bfloat16))  # the param is its rounded master
        assert state["step"].item() == SMALL["steps"]  # no step skipped by the scaler


def _low_precision_example():
    """examples/low_precision_states.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("low_precision_states", EXAMPLE.parent / "low_precision_states.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_low_precision_states_example_compares_both_runs(capsys):
    """examples/low_precision_states.py runs (3 steps): every run (fp32, bf16 and int8 states,
    pure bf16 params with torch.optim and with stochastic rounding) reports a final loss, and the
    state bytes per parameter of each state dtype."""
    module = _low_precision_example()
    module.main(["--steps", "3", "--bf16-params", "--int8"])
    out = capsys.readouterr().out
    assert "fp32 states: final loss" in out and "bf16 states: final loss" in out
    assert "int8 states: final loss" in out and "relative difference of final losses, int8 states" in out
    assert "bf16 params, stochastic rounding: final loss" in out and "closer to the fp32 run" in out
    assert "optimizer state 8.000 bytes/param" in out and "optimizer state 4.000 bytes/param" in out


def test_low_precision_states_example_measures_the_rounding_floor(capsys):
    """--rounding-floor trains float32 states once more on the reference backend (the same math,
    other last bits) and reports its distance from the fp32 run, per seed and over the seeds: the
    yardstick the 8-bit run's difference is read against. After 3 steps the two float32 runs
    agree to far better than the bars."""
    module = _low_precision_example()
    module.main(["--steps", "3", "--no-bf16-states", "--rounding-floor", "--seeds", "0,1"])
    out = capsys.readouterr().out
    assert "seed 1, fp32 states, reference backend: final loss" in out
    floors = re.findall(r"fp32 states on the reference backend \(rounding alone\): ([0-9.]+)%", out)
    assert len(floors) == 2 and all(float(floor) < 0.1 for floor in floors)
    assert re.search(r"fp32 states, reference backend: relative difference .* mean over 2 seeds [-+][0-9.]+% "
                     r"\(standard error [0-9.]+%\), mean \|difference\| [0-9.]+%", out)


def test_low_precision_states_example_cosine_schedule():
    """--schedule cosine: linear warmup to the peak over WARMUP_STEPS steps, then a cosine decay
    that lands on FINAL_LR_FRACTION of it at the last step, never rising; constant stays 1."""
    module = _low_precision_example()
    steps = 300
    factor = module.lr_factor("cosine", steps)
    values = [factor(step) for step in range(steps)]
    warmup = module.WARMUP_STEPS
    assert values[:warmup] == pytest.approx([(step + 1) / warmup for step in range(warmup)])
    assert values[warmup - 1] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(module.FINAL_LR_FRACTION)
    assert all(later <= earlier for earlier, later in zip(values[warmup - 1:], values[warmup:]))
    assert values[(warmup + steps) // 2] == pytest.approx((1 + module.FINAL_LR_FRACTION) / 2, abs=0.01)
    assert {module.lr_factor("constant", steps)(step) for step in range(steps)} == {1.0}


def test_low_precision_states_example_trains_on_the_schedule(capsys):
    """The schedule and --beta2 reach the optimizers: with --schedule cosine the two float32 runs
    still agree, and the fp32 run's final loss differs from a constant-rate run's of the same
    seed, and from a run with another beta2."""
    module = _low_precision_example()
    module.main(["--steps", "12", "--no-bf16-states", "--rounding-floor", "--schedule", "cosine"])
    cosine = capsys.readouterr().out
    module.main(["--steps", "12", "--no-bf16-states"])
    constant = capsys.readouterr().out
    module.main(["--steps", "12", "--no-bf16-states", "--beta2", "0.9"])
    other_beta2 = capsys.readouterr().out
    assert "betas (0.9, 0.999), learning rate warmed up over 10 steps to 3e-3, then cosine-decayed to 3e-04" in cosine
    assert "betas (0.9, 0.999), learning rate 3e-3 throughout" in constant
    assert "betas (0.9, 0.9), learning rate 3e-3 throughout" in other_beta2
    final = re.compile(r"fp32 states: final loss \(16 fixed batches\) ([0-9.]+)")
    losses = {final.search(out).group(1) for out in (cosine, constant, other_beta2)}
    assert len(losses) == 3
    floor = re.search(r"fp32 states on the reference backend \(rounding alone\): ([0-9.]+)%", cosine)
    assert float(floor.group(1)) < 0.1
