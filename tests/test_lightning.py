"""PyTorch Lightning (issue 15): fusedopt.AdamW returned from configure_optimizers trains as
torch.optim.AdamW does, with Lightning's mixed precision and its gradient clipping.

Lightning refuses `gradient_clip_val` for an optimizer declaring `_step_supports_amp_scaling`
(it reads it as "unscales inside step(), so grads cannot be unscaled before clipping"), even
under bf16-mixed where no GradScaler exists. fusedopt answers that flag True only to torch's
GradScaler; the tests here run Lightning's bf16 and fp16 (real GradScaler) paths on the CPU.
"""
import pytest
import torch

import fusedopt

pl = pytest.importorskip("lightning.pytorch", reason="lightning is not installed (pip install lightning)")

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

STEPS = 6


class TinyRegressor(pl.LightningModule):
    def __init__(self, make_optimizer):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        self.make_optimizer = make_optimizer
        self.losses = []
        self.clipped_norms = []  # the grads' global L2 norm after Lightning's clipping, per step

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x).float(), y)
        self.losses.append(loss.detach().float().item())
        return loss

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_val:
            self.clipped_norms.append(torch.nn.utils.get_total_norm([p.grad for p in self.parameters()]).item())

    def configure_optimizers(self):
        return self.make_optimizer(self.parameters())


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS * 16, 8, generator=g)
    y = 5.0 * x.sum(dim=1, keepdim=True)  # large targets: grads well above a clip norm of 1
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def _fit(make_optimizer, precision="32-true", gradient_clip_val=None):
    model = TinyRegressor(make_optimizer)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, precision=precision,
                         gradient_clip_val=gradient_clip_val, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, _data())
    return model


def _torch_adamw(params):
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)


def _fusedopt_adamw(params, **options):
    return fusedopt.AdamW(params, lr=1e-2, weight_decay=0.1, **options)


def _assert_same_training(ours, theirs):
    assert len(ours.losses) == len(theirs.losses) == STEPS
    torch.testing.assert_close(torch.tensor(ours.losses), torch.tensor(theirs.losses), rtol=1e-5, atol=1e-6)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_configure_optimizers_matches_torch_adamw():
    _assert_same_training(_fit(_fusedopt_adamw), _fit(_torch_adamw))


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_gradient_clip_val_under_mixed_precision(precision):
    """bf16-mixed has no GradScaler; 16-mixed has a real one (Lightning unscales before
    clipping, GradScaler.step then hands fusedopt found_inf only). Both clip as Lightning
    does for torch.optim.AdamW: unscaled grads, whose norm (hundreds) is cut to 1."""
    ours = _fit(_fusedopt_adamw, precision, gradient_clip_val=1.0)
    theirs = _fit(_torch_adamw, precision, gradient_clip_val=1.0)
    _assert_same_training(ours, theirs)
    assert ours.clipped_norms == pytest.approx([1.0] * STEPS, rel=1e-4)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_max_grad_norm_is_lightnings_clipping_fused(precision):
    """The fast path: no gradient_clip_val, fusedopt clips inside its step with the same
    global L2 norm Lightning's gradient_clip_val=1.0 computes."""
    ours = _fit(lambda ps: _fusedopt_adamw(ps, max_grad_norm=1.0), precision)
    theirs = _fit(_torch_adamw, precision, gradient_clip_val=1.0)
    _assert_same_training(ours, theirs)
