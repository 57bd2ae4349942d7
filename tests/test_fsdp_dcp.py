"""FSDP2 (fully_shard, DTensor params) with torch.distributed.checkpoint (issue 15): 2 gloo
processes on the CPU save with one optimizer through get_optimizer_state_dict + dcp.save and
load into the other with dcp.load (default planner) + set_optimizer_state_dict; training then
continues on the same trajectory. With master_weights=True (bf16 params), the fp32 moments
and master copy survive the round trip bit for bit, and so do bf16 states
(state_dtype=torch.bfloat16), which torch's load would cast to the param's dtype."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fusedopt

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not dist.is_available(), reason="torch without distributed")]
WORLD = 2

MAKERS = {
    "torch": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "fusedopt": lambda ps: fusedopt.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "fusedopt-master": lambda ps: fusedopt.AdamW(ps, lr=1e-2, weight_decay=0.1, master_weights=True),
    "fusedopt-bf16-states": lambda ps: fusedopt.AdamW(ps, lr=1e-2, weight_decay=0.1, state_dtype=torch.bfloat16),
}
# (source, destination, param dtype)
CASES = [("torch", "fusedopt", torch.float32), ("fusedopt", "torch", torch.float32),
         ("fusedopt-master", "fusedopt-master", torch.bfloat16), ("fusedopt-master", "torch", torch.bfloat16),
         ("fusedopt-bf16-states", "fusedopt-bf16-states", torch.float32)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sharded_model(dtype: torch.dtype) -> torch.nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).to(dtype)
    mesh = init_device_mesh("cpu", (WORLD,))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _train(model, optimizer, steps: int, seed: int, dtype: torch.dtype) -> None:
    data = torch.Generator().manual_seed(seed * 10 + dist.get_rank())
    for _ in range(steps):
        x, y = torch.randn(8, 16, generator=data).to(dtype), torch.randn(8, 4, generator=data)
        ((model(x).float() - y) ** 2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _round_trip(directory: str, source: str, destination: str, dtype: torch.dtype) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    model = _sharded_model(dtype)
    optimizer = MAKERS[source](model.parameters())
    _train(model, optimizer, 3, seed=1, dtype=dtype)
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)},
             checkpoint_id=directory)

    resumed = _sharded_model(dtype)
    resumed_optimizer = MAKERS[destination](resumed.parameters())
    loaded = {"model": get_model_state_dict(resumed), "optim": get_optimizer_state_dict(resumed, resumed_optimizer)}
    dcp.load(loaded, checkpoint_id=directory)
    set_model_state_dict(resumed, loaded["model"])
    set_optimizer_state_dict(resumed, resumed_optimizer, loaded["optim"])

    # Every state tensor the destination keeps, against the source's, in the destination's dtype.
    state_dtypes, state_equal = set(), True
    for p, q in zip(model.parameters(), resumed.parameters()):
        for key, value in resumed_optimizer.state[q].items():
            saved = _local(optimizer.state[p][key])
            state_dtypes.add((key, _local(value).dtype))
            state_equal &= torch.equal(_local(value), saved.to(_local(value).dtype))

    _train(model, optimizer, 4, seed=2, dtype=dtype)
    _train(resumed, resumed_optimizer, 4, seed=2, dtype=dtype)
    difference = max((a.full_tensor().float() - b.full_tensor().float()).abs().max().item()
                     for a, b in zip(model.parameters(), resumed.parameters()))
    kinds = sorted({type(p).__name__ for p in resumed.parameters()})
    return dict(difference=difference, state_dtypes=sorted((k, str(d)) for k, d in state_dtypes),
                state_equal=bool(state_equal), kinds=kinds)


def _worker(rank: int, port: int, directory: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        for index, (source, destination, dtype) in enumerate(CASES):
            try:
                results[(rank, index)] = _round_trip(os.path.join(directory, str(index)), source, destination, dtype)
            except Exception as error:  # reported by the parent, naming the case
                results[(rank, index)] = dict(error=f"{type(error).__name__}: {error}")
                raise
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def round_trips(tmp_path_factory):
    results = mp.Manager().dict()
    try:
        mp.spawn(_worker, args=(_free_port(), str(tmp_path_factory.mktemp("dcp")), results), nprocs=WORLD)
    except Exception:
        pass  # the failing case's error is in results; each test reports its own
    return dict(results)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{s}->{d}" for s, d, _ in CASES])
def test_fsdp2_dcp_round_trip(round_trips, index):
    source, destination, dtype = CASES[index]
    for rank in range(WORLD):
        result = round_trips.get((rank, index))
        assert result is not None, "the worker stopped before this case (see the earlier case's error)"
        assert "error" not in result, result.get("error")
        assert result["kinds"] == ["DTensor"]
        keys = {key for key, _ in result["state_dtypes"]}
        assert {"step", "exp_avg", "exp_avg_sq"} <= keys
        if destination == "fusedopt-master":
            # the fp32 moments and master copy came back as saved, not through bf16
            assert all(d == "torch.float32" for _, d in result["state_dtypes"]) and "master_param" in keys
        if destination == "fusedopt-bf16-states":  # the moments stayed bf16, the step counter float32
            assert dict(result["state_dtypes"]) == {"step": "torch.float32", "exp_avg": "torch.bfloat16",
                                                    "exp_avg_sq": "torch.bfloat16"}
        assert result["state_equal"], "a loaded state tensor differs from the saved one"
        if source.startswith("fusedopt-master") and destination == "torch":
            continue  # torch then steps in bf16 state: the same start, not the same trajectory
        assert result["difference"] < 1e-6 if dtype == torch.float32 else result["difference"] == 0.0
