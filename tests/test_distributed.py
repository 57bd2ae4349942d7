"""DDP and FSDP2 (DTensor params) on this machine: 2 gloo processes on the CPU."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fusedopt

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not dist.is_available(), reason="torch without distributed")]
WORLD = 2
STEPS = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def _wrap(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    if mode == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _worker(rank: int, port: int, mode: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        finals = []
        for optimizer_class in (torch.optim.AdamW, fusedopt.AdamW):
            model = _wrap(_model(), mode)
            optimizer = optimizer_class(model.parameters(), lr=1e-2)
            data = torch.Generator().manual_seed(rank)
            for _ in range(STEPS):
                x, y = torch.randn(8, 16, generator=data), torch.randn(8, 4, generator=data)
                optimizer.zero_grad()
                ((model(x) - y) ** 2).mean().backward()
                optimizer.step()
            full = [p.full_tensor() if hasattr(p, "full_tensor") else p.detach() for p in model.parameters()]
            finals.append([t.clone() for t in full])
            kinds = {type(p).__name__ for p in model.parameters()}
        results[rank] = (max((a - b).abs().max().item() for a, b in zip(*finals)), sorted(kinds))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_fusedopt_matches_torch_under(mode):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), mode, results), nprocs=WORLD)
    for rank in range(WORLD):
        difference, kinds = results[rank]
        assert difference < 1e-6
        assert kinds == (["DTensor"] if mode == "fsdp2" else ["Parameter"])
