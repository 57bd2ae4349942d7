"""examples/train_gpt.py: fusedopt trains the example GPT exactly as torch's fused AdamW does."""
import importlib.util
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
