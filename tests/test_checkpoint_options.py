"""fusedopt's own group keys and checkpoints that lack them (a torch.optim checkpoint has
none): load_state_dict gives them their defaults, as torch.optim's __setstate__ does for a
flag an older checkpoint lacks (issue 14's contract; an omitted key is also how a fusedopt
checkpoint says "default"). Setting the option on the groups after loading turns it back on,
and the step then runs with it."""
import pytest
import torch

import fusedopt


@pytest.mark.parametrize("option,value,dtype", [("max_grad_norm", 1.0, torch.float32),
                                                ("master_weights", True, torch.bfloat16)])
def test_a_torch_checkpoint_defaults_own_options_and_they_can_be_set_again(option, value, dtype, backend):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(16, dtype=dtype))
    theirs = torch.optim.AdamW([p])
    p.grad = torch.randn_like(p) * 10
    theirs.step()
    ours = fusedopt.AdamW([p], backend=backend, **{option: value})
    ours.load_state_dict(theirs.state_dict())
    assert ours.param_groups[0][option] == fusedopt.AdamW._own_setstate_defaults[option]
    for group in ours.param_groups:
        group[option] = value
    p.grad = torch.randn_like(p) * 10
    ours.step()
    if option == "master_weights":
        assert ours.state[p]["master_param"].dtype == torch.float32
    assert ours.state_dict()["param_groups"][0][option] == value
