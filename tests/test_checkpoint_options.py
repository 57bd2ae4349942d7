"""Open question of issue 15, pinned: a torch.optim checkpoint has none of fusedopt's own
group keys, and load_state_dict then gives them their defaults ("what a checkpoint without
them meant"), so an optimizer built with master_weights=True or max_grad_norm= silently loses
the option when it loads a torch checkpoint (DCP keeps it: its destination dict carries the
key). Marked xfail until the lead decides whether the built value should win."""
import pytest
import torch

import fusedopt


@pytest.mark.xfail(strict=True, reason="a torch checkpoint resets fusedopt's own options to their defaults")
@pytest.mark.parametrize("option,value,dtype", [("max_grad_norm", 1.0, torch.float32),
                                                ("master_weights", True, torch.bfloat16)])
def test_options_survive_loading_a_torch_checkpoint(option, value, dtype):
    p = torch.nn.Parameter(torch.randn(3, dtype=dtype))
    theirs = torch.optim.AdamW([p])
    p.grad = torch.ones_like(p)
    theirs.step()
    ours = fusedopt.AdamW([p], backend="reference", **{option: value})
    ours.load_state_dict(theirs.state_dict())
    assert ours.param_groups[0][option] == value
