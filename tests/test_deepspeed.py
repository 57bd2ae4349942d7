"""DeepSpeed with fusedopt as its client optimizer (issue 15): `deepspeed.initialize(model=...,
optimizer=fusedopt.AdamW(...), config=...)` on the CPU (gloo, one process, run in a child so
its process group stays out of this one) trains as torch.optim.AdamW does under the same
engine, with DeepSpeed's gradient clipping, without ZeRO and with ZeRO stage 1."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import fusedopt

pytest.importorskip("deepspeed", reason="deepspeed is not installed (DS_BUILD_OPS=0 pip install deepspeed --no-build-isolation)")

pytestmark = pytest.mark.slow
STEPS = 5
CONFIGS = {
    "plain": {"train_micro_batch_size_per_gpu": 4, "gradient_clipping": 1.0},
    "zero1": {"train_micro_batch_size_per_gpu": 4, "gradient_clipping": 1.0, "zero_optimization": {"stage": 1},
              "zero_allow_untested_optimizer": True},  # ZeRO asks this of any client optimizer
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(optimizer_class, config) -> list:
    import deepspeed

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = optimizer_class(model.parameters(), lr=1e-2, weight_decay=0.1)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    data = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        x = torch.randn(4, 8, generator=data)
        loss = (engine(x) - 20.0 * x.sum(dim=1, keepdim=True)).square().mean()  # grads far above the clip
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses + [p.detach().clone() for p in model.parameters()]


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    torch.set_num_threads(1)
    for name, config in CONFIGS.items():
        results[name] = (_run(fusedopt.AdamW, config), _run(torch.optim.AdamW, config))


@pytest.mark.parametrize("config", list(CONFIGS))
def test_client_optimizer_matches_torch_adamw(config, deepspeed_runs):
    ours, theirs = deepspeed_runs[config]
    torch.testing.assert_close(torch.tensor(ours[:STEPS]), torch.tensor(theirs[:STEPS]))
    for a, b in zip(ours[STEPS:], theirs[STEPS:]):
        torch.testing.assert_close(a, b)


@pytest.fixture(scope="module")
def deepspeed_runs():
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=1)
    return dict(results)
