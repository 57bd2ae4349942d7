"""Hugging Face Trainer recipes (issue 15), on a tiny GPT-2 built from a config (random init,
no downloads, no tokenizer: input_ids tensors through a torch Dataset).

`optimizer_cls_and_kwargs=(fusedopt.AdamW, {...})` lets the Trainer build its two param
groups (no weight decay for biases and LayerNorm weights), as it does for its own
`optim="adamw_torch_fused"`; the two train identically. `optimizers=(fusedopt.AdamW(...), None)`
matches only when the caller builds those groups too.
"""
import pytest
import torch

import fusedopt

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers accelerate)")
pytest.importorskip("accelerate", reason="the Trainer needs accelerate (pip install accelerate)")

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

STEPS, LR, WEIGHT_DECAY = 8, 5e-3, 0.1


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, count=STEPS * 4, length=16, vocab=64):
        self.ids = torch.randint(0, vocab, (count, length), generator=torch.Generator().manual_seed(2))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def _tiny_gpt2():
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def _train(tmp_path, **trainer_kwargs):
    model = trainer_kwargs.pop("model", None) or _tiny_gpt2()
    losses = []
    model.register_forward_hook(lambda module, args, output: losses.append(output.loss.item()))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, max_steps=STEPS, per_device_train_batch_size=4,
        learning_rate=LR, weight_decay=WEIGHT_DECAY, optim=trainer_kwargs.pop("optim", "adamw_torch"),
        lr_scheduler_type="linear", warmup_steps=2, max_grad_norm=1.0,
        report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=RandomTokens(), **trainer_kwargs)
    trainer.train()
    return model, losses, getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it


def _assert_same_training(ours, theirs):
    (model, losses, _), (their_model, their_losses, _) = ours, theirs
    assert len(losses) == len(their_losses) == STEPS
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(their_losses))
    for (name, a), (_, b) in zip(model.named_parameters(), their_model.named_parameters()):
        torch.testing.assert_close(a, b, msg=lambda m: f"{name}: {m}")


def _decay_groups(model):
    """The groups the Trainer builds for its own optimizers (biases and LayerNorm weights get
    no weight decay); for GPT-2 that is exactly "decay the matrices"."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]


def test_optimizer_cls_and_kwargs_matches_adamw_torch_fused(tmp_path):
    theirs = _train(tmp_path, optim="adamw_torch_fused")
    assert theirs[2].defaults.get("fused") is True
    ours = _train(tmp_path, optimizer_cls_and_kwargs=(fusedopt.AdamW, {"lr": LR}))
    assert isinstance(ours[2], fusedopt.AdamW)
    assert [g["weight_decay"] for g in ours[2].param_groups] == [WEIGHT_DECAY, 0.0]
    _assert_same_training(ours, theirs)


def test_hand_grouped_optimizer_matches_too(tmp_path):
    model = _tiny_gpt2()
    trainer_groups = _train(tmp_path, optimizer_cls_and_kwargs=(fusedopt.AdamW, {"lr": LR}))
    hand = _train(tmp_path, model=model, optimizers=(fusedopt.AdamW(_decay_groups(model), lr=LR), None))
    names = {id(p): n for n, p in model.named_parameters()}
    their_names = {id(p): n for n, p in trainer_groups[0].named_parameters()}
    assert ([sorted(names[id(p)] for p in g["params"]) for g in hand[2].param_groups]
            == [sorted(their_names[id(p)] for p in g["params"]) for g in trainer_groups[2].param_groups])
    _assert_same_training(hand, trainer_groups)


def test_ungrouped_optimizer_decays_biases_and_layernorm(tmp_path):
    """The trap the recipe avoids: one group with weight_decay decays every bias and
    LayerNorm weight, which the Trainer's own optimizers exclude, so training differs."""
    model = _tiny_gpt2()
    flat = _train(tmp_path, model=model, optimizers=(fusedopt.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY), None))
    grouped = _train(tmp_path, optimizer_cls_and_kwargs=(fusedopt.AdamW, {"lr": LR}))
    ln_flat = flat[0].transformer.ln_f.weight
    ln_grouped = grouped[0].transformer.ln_f.weight
    assert not torch.allclose(ln_flat, ln_grouped, rtol=0, atol=1e-6)
