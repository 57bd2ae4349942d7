"""torch.distributed.checkpoint (DCP) with its default planner, single process: a
checkpoint written from torch.optim loads into fusedopt and the reverse, and training
continues on the same trajectory. The default planner refuses any destination key that
the checkpoint lacks, so fusedopt's state_dict must carry torch's key set."""
import pytest
import torch

import fusedopt

dcp = pytest.importorskip("torch.distributed.checkpoint")
state_dict_api = pytest.importorskip("torch.distributed.checkpoint.state_dict")

MAKERS = {
    "torch": lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.1),
    "fusedopt": lambda ps: fusedopt.AdamW(ps, lr=0.1, weight_decay=0.1),
}


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _train(model, optimizer, steps):
    g = torch.Generator().manual_seed(steps)
    for _ in range(steps):
        model(torch.randn(5, 4, generator=g)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
@pytest.mark.parametrize("source,destination", [("torch", "fusedopt"), ("fusedopt", "torch"), ("fusedopt", "fusedopt")])
def test_dcp_checkpoint_moves_between_torch_and_fusedopt(source, destination, tmp_path):
    model = _model()
    optimizer = MAKERS[source](model.parameters())
    _train(model, optimizer, 3)
    dcp.save({"optim": state_dict_api.get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(tmp_path))

    resumed = _model()
    resumed.load_state_dict(model.state_dict())
    resumed_optimizer = MAKERS[destination](resumed.parameters())
    loaded = {"optim": state_dict_api.get_optimizer_state_dict(resumed, resumed_optimizer)}
    dcp.load(loaded, checkpoint_id=str(tmp_path))
    state_dict_api.set_optimizer_state_dict(resumed, resumed_optimizer, loaded["optim"])

    _train(model, optimizer, 4)
    _train(resumed, resumed_optimizer, 4)
    for a, b in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_state_dict_has_torchs_group_keys_unless_an_option_is_set():
    p = torch.nn.Parameter(torch.randn(3))
    for ours, theirs in ((fusedopt.Adam, torch.optim.Adam), (fusedopt.AdamW, torch.optim.AdamW),
                         (fusedopt.SGD, torch.optim.SGD), (fusedopt.RMSprop, torch.optim.RMSprop)):
        assert set(ours([p]).state_dict()["param_groups"][0]) == set(theirs([p]).state_dict()["param_groups"][0])
    group = fusedopt.AdamW([p], optimized_update=True, max_grad_norm=1.0).state_dict()["param_groups"][0]
    assert group["optimized_update"] is True and group["max_grad_norm"] == 1.0 and "backend" not in group


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_torch_checkpoint_into_fusedopt_with_options_set_needs_partial_load(tmp_path):
    """A fusedopt option set to a non-default value (max_grad_norm here) is a group key that
    torch's checkpoint lacks: the default planner refuses it, naming the key; with
    allow_partial_load the option keeps the value this optimizer was built with."""
    model = _model()
    optimizer = MAKERS["torch"](model.parameters())
    _train(model, optimizer, 3)
    dcp.save({"optim": state_dict_api.get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(tmp_path))

    resumed = _model()
    resumed.load_state_dict(model.state_dict())
    resumed_optimizer = fusedopt.AdamW(resumed.parameters(), lr=0.1, weight_decay=0.1, max_grad_norm=1.0)
    loaded = {"optim": state_dict_api.get_optimizer_state_dict(resumed, resumed_optimizer)}
    with pytest.raises(dcp.api.CheckpointException, match="Missing key in checkpoint state_dict: optim.param_groups.0.max_grad_norm"):
        dcp.load(loaded, checkpoint_id=str(tmp_path))
    dcp.load(loaded, checkpoint_id=str(tmp_path), planner=dcp.DefaultLoadPlanner(allow_partial_load=True))
    state_dict_api.set_optimizer_state_dict(resumed, resumed_optimizer, loaded["optim"])
    assert resumed_optimizer.param_groups[0]["max_grad_norm"] == 1.0
    for p, q in zip(model.parameters(), resumed.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optimizer.state[p][key], resumed_optimizer.state[q][key])
