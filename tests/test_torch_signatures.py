"""Each optimizer with a torch.optim namesake takes torch's arguments as torch does: every
parameter of torch's constructor, in the same position where torch takes it positionally,
with an equal default. fusedopt's own options (backend, master_weights, ...) come after."""
import inspect

import pytest
import torch

import fusedopt

NAMESAKES = sorted(name for name in fusedopt.optim.__all__ if hasattr(torch.optim, name))


def test_namesakes_are_found():
    assert {"Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Rprop", "SparseAdam"} <= set(NAMESAKES)


@pytest.mark.parametrize("name", NAMESAKES)
def test_constructor_takes_torchs_arguments(name):
    theirs = inspect.signature(getattr(torch.optim, name).__init__).parameters
    ours = inspect.signature(getattr(fusedopt, name).__init__).parameters
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    our_positions = [key for key, p in ours.items() if p.kind == positional]
    for index, (key, parameter) in enumerate(theirs.items()):
        assert key in ours, f"{name} lacks torch's argument {key!r}"
        if parameter.kind == positional:  # a call passing it by position must reach the same argument
            assert our_positions[index] == key, f"{name}: torch takes {key!r} as positional argument {index}"
        if parameter.default is not inspect.Parameter.empty:
            assert ours[key].default == parameter.default, f"{name}: default of {key!r}"


def test_rmsprop_flags_by_position_as_torch_takes_them():
    p = torch.nn.Parameter(torch.ones(3))
    q = torch.nn.Parameter(torch.ones(3))
    # lr, alpha, eps, weight_decay, momentum, centered, capturable, foreach, maximize
    ours = fusedopt.RMSprop([p], 0.1, 0.9, 1e-8, 0.0, 0.0, False, False, None, True)
    theirs = torch.optim.RMSprop([q], 0.1, 0.9, 1e-8, 0.0, 0.0, False, False, False, True)
    assert ours.param_groups[0]["maximize"] and theirs.param_groups[0]["maximize"]
    for opt, param in ((ours, p), (theirs, q)):
        param.grad = torch.tensor([1.0, -2.0, 3.0])
        opt.step()
    torch.testing.assert_close(p, q)
