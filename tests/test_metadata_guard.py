"""fusedopt._metadata_guard: torch's TensorGuards, used for the per-step metadata read of
params and grads only after a self-test, and trusted only when it answers True."""
import pytest
import torch

from fusedopt._metadata_guard import metadata_guard


def test_the_guard_is_usable_on_this_torch():
    """CI's torch passes the self-test, so the buckets' tests exercise the guard (they also
    run without it: tests/test_buckets.py)."""
    assert metadata_guard([torch.zeros(3)]) is not None


def _model():
    base = torch.zeros(6, 4)
    return [base, base.t(), torch.zeros(5, dtype=torch.float16), torch.nn.Parameter(torch.zeros(2, 3))]


CHANGES = {
    "dtype": (2, lambda: torch.zeros(5, dtype=torch.bfloat16)),
    "dtype, same bytes": (0, lambda: torch.zeros(6, 4).view(torch.int32)),
    "shape, same elements": (0, lambda: torch.zeros(24)),
    "strides, same shape": (1, lambda: torch.zeros(4, 6)),
    "sparse": (0, lambda: torch.zeros(6, 4).to_sparse()),
    "device": (0, lambda: torch.zeros(6, 4, device="meta")),
    "a plain tensor for a Parameter": (3, lambda: torch.zeros(2, 3)),
    "requires_grad": (0, lambda: torch.zeros(6, 4, requires_grad=True)),
}


def test_true_for_other_tensors_with_the_same_metadata():
    guard = metadata_guard(_model())
    again = _model()
    again[0] += 1  # values do not matter
    assert guard(again) is True


@pytest.mark.parametrize("change", CHANGES, ids=str)
def test_false_for_each_change(change):
    index, make = CHANGES[change]
    guard = metadata_guard(_model())
    tensors = _model()
    tensors[index] = make()
    assert guard(tensors) is False


def test_false_not_an_exception_for_a_list_of_another_length_or_a_non_tensor():
    guard = metadata_guard(_model())
    assert guard(_model()[:3]) is False
    assert guard([*_model()[:3], None]) is False


def test_false_under_autocast_which_callers_read_past():
    """Only True is trusted: unchanged tensors read False under another dispatch state."""
    guard = metadata_guard(_model())
    with torch.autocast("cpu"):
        assert guard(_model()) is False
    assert guard(_model()) is True


def test_none_for_no_tensors():
    assert metadata_guard([]) is None
