"""Lazy (sparse-row) Adam: fusedopt.SparseAdam and Adam/AdamW(lazy_mode=True) against
torch.optim.SparseAdam step by step (nn.Embedding(sparse=True) grads and hand-made ones,
uncoalesced, with repeated indices), on every backend this machine runs; torch's
checkpoints both ways; and the errors (dense grads, bad indices, refused options)."""
import io
import math

import pytest
import torch

import fusedopt
from fusedopt._layout import SPARSE_INDEX_ROW, SPARSE_TABLE_ROWS

# cuda_host, cuda_host_classic: the CUDA kernels built as host C++ (fusedopt._cuda_host,
# tests/_host_cuda.py) as emulated devices 0 (32 KB parameter blocks) and 1 (4 KB).
BACKENDS = ("reference", "cpu", pytest.param("triton", marks=pytest.mark.triton), "cuda_host", "cuda_host_classic")
HOST_BACKENDS = ("cuda_host", "cuda_host_classic")
DTYPES = (torch.float32, torch.float64)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> str:
    if request.param in HOST_BACKENDS:
        from _host_cuda import register_host_backends  # skips when fusedopt._cuda_host is not built

        register_host_backends(monkeypatch)
    reason = fusedopt.backends.unusable_reason(request.param, torch.device("cpu"))
    if reason:
        pytest.skip(f"backend {request.param!r} cannot run here: {reason}")
    return request.param


def assert_follows(ours, theirs, backend, message=""):
    """Bit for bit where the operations are torch's own (the reference backend runs them);
    the compiled kernels to rounding: their IEEE sqrt differs by an ulp from torch 2.13's
    float32 CPU sqrt about once in six (torch's is not correctly rounded), and their
    bias corrections may differ from Python's pow in the last bit of a double."""
    if backend == "reference":
        assert torch.equal(ours, theirs), message
    elif ours.dtype == torch.float64:
        torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-15, msg=message)
    else:
        torch.testing.assert_close(ours, theirs, rtol=2e-6, atol=2e-7, msg=message)


def _embeddings(dtype, sizes=((40, 6), (17, 3)), seed=0):
    torch.manual_seed(seed)
    ours = [torch.nn.Embedding(n, d, sparse=True).to(dtype) for n, d in sizes]
    theirs = [torch.nn.Embedding(n, d, sparse=True).to(dtype) for n, d in sizes]
    for a, b in zip(ours, theirs):
        b.load_state_dict(a.state_dict())
    return ours, theirs


def _embedding_step(embeddings, optimizer, inputs):
    optimizer.zero_grad()
    loss = sum((e(i) ** 2).sum() + e(i).sum() for e, i in zip(embeddings, inputs))
    loss.backward()
    optimizer.step()


def _inputs(sizes, step, touched=5):
    g = torch.Generator().manual_seed(1000 + step)
    # a few rows, drawn with repeats: the grads are uncoalesced, with repeated indices
    return [torch.randint(0, min(n, 12), (2, touched), generator=g) for n, _ in sizes]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("options", [{}, {"maximize": True}, {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6}],
                         ids=["default", "maximize", "hyper"])
def test_embeddings_follow_torch_sparse_adam_step_by_step(backend, dtype, options):
    sizes = ((40, 6), (17, 3))
    ours, theirs = _embeddings(dtype, sizes)
    initial = [e.weight.detach().clone() for e in ours]
    opt = fusedopt.SparseAdam([e.weight for e in ours], backend=backend, **options)
    ref = torch.optim.SparseAdam([e.weight for e in theirs], **options)
    touched = [set() for _ in sizes]
    for step in range(22):
        inputs = _inputs(sizes, step)
        for t, i in zip(touched, inputs):
            t.update(i.flatten().tolist())
        _embedding_step(ours, opt, inputs)
        _embedding_step(theirs, ref, inputs)
        for a, b in zip(ours, theirs):
            assert_follows(a.weight, b.weight, backend, f"step {step}")
    for a, b, start, rows in zip(ours, theirs, initial, touched):
        untouched = torch.tensor(sorted(set(range(a.num_embeddings)) - rows))
        assert torch.equal(a.weight[untouched], start[untouched])  # bit for bit
        state = opt.state[a.weight]
        assert_follows(state["exp_avg"], ref.state[b.weight]["exp_avg"], backend)
        assert_follows(state["exp_avg_sq"], ref.state[b.weight]["exp_avg_sq"], backend)
        assert not state["exp_avg_sq"][untouched].any()
        assert int(state["step"].item()) == ref.state[b.weight]["step"] == 22


def _hand_made_grads(step, dtype):
    """Sparse grads of every shape a sparse COO tensor can have for these params: row
    sparsity with dense dims, element sparsity (two sparse dims), repeated and unsorted
    indices, and an empty grad now and then."""
    g = torch.Generator().manual_seed(step)
    rows = torch.randint(0, 9, (1, 7), generator=g)  # (9, 4, 3): rows of 12 elements
    a = torch.sparse_coo_tensor(rows, torch.randn(7, 4, 3, generator=g, dtype=dtype), (9, 4, 3))
    cells = torch.stack([torch.randint(0, 5, (10,), generator=g), torch.randint(0, 6, (10,), generator=g)])
    b = torch.sparse_coo_tensor(cells, torch.randn(10, generator=g, dtype=dtype), (5, 6))
    n = 0 if step % 5 == 3 else 4
    c = torch.sparse_coo_tensor(torch.randint(0, 11, (1, n), generator=g), torch.randn(n, generator=g, dtype=dtype),
                                (11,))
    return [a, b, c]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_hand_made_sparse_grads_follow_torch_sparse_adam(backend, dtype):
    torch.manual_seed(1)
    values = [torch.randn(9, 4, 3, dtype=dtype), torch.randn(5, 6, dtype=dtype), torch.randn(11, dtype=dtype)]
    ours = [torch.nn.Parameter(v.clone()) for v in values]
    theirs = [torch.nn.Parameter(v.clone()) for v in values]
    opt = fusedopt.SparseAdam(ours, lr=0.02, backend=backend)
    ref = torch.optim.SparseAdam(theirs, lr=0.02)
    for step in range(21):
        grads = _hand_made_grads(step, dtype)
        assert not grads[0].is_coalesced()
        for p, q, grad in zip(ours, theirs, grads):
            p.grad, q.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()
        for p, q in zip(ours, theirs):
            assert_follows(p, q, backend, f"step {step}")
    assert [int(opt.state[p]["step"]) for p in ours] == [ref.state[q]["step"] for q in theirs]


def test_lazy_adam_with_sparse_adams_options_is_sparse_adam(backend):
    """Adam(lazy_mode=True, optimized_update=True): torch.optim.SparseAdam's update exactly."""
    sizes = ((30, 5),)
    ours, theirs = _embeddings(torch.float32, sizes)
    opt = fusedopt.Adam(ours[0].parameters(), lr=0.01, lazy_mode=True, optimized_update=True, backend=backend)
    ref = torch.optim.SparseAdam(theirs[0].parameters(), lr=0.01)
    for step in range(20):
        inputs = _inputs(sizes, step)
        _embedding_step(ours, opt, inputs)
        _embedding_step(theirs, ref, inputs)
        assert_follows(ours[0].weight, theirs[0].weight, backend, f"step {step}")


@pytest.mark.parametrize("name, options", [
    ("Adam", {}), ("Adam", {"weight_decay": 0.1}), ("Adam", {"amsgrad": True}), ("Adam", {"maximize": True}),
    ("AdamW", {}), ("AdamW", {"weight_decay": 0.3, "amsgrad": True}), ("Adam", {"optimized_update": True}),
], ids=lambda x: x if isinstance(x, str) else ",".join(x) or "default")
def test_lazy_adam_with_every_row_present_is_adam(backend, name, options):
    """With every row in every grad, lazy mode updates what Adam/AdamW update: equal to
    torch's dense Adam/AdamW to rounding in float64 (the moving averages are computed in
    SparseAdam's order), for each option lazy mode takes."""
    torch.manual_seed(2)
    start = torch.randn(6, 4, dtype=torch.float64)
    p = torch.nn.Parameter(start.clone())
    q = torch.nn.Parameter(start.clone())
    opt = getattr(fusedopt, name)([p], lr=0.01, lazy_mode=True, backend=backend, **options)
    theirs = {k: v for k, v in options.items() if k != "optimized_update"}
    ref = getattr(torch.optim, name)([q], lr=0.01, foreach=False, **theirs)
    for step in range(20):
        grad = torch.randn(6, 4, dtype=torch.float64)
        order = torch.randperm(6)  # unsorted, every row twice: halves that coalesce sums exactly
        p.grad = torch.sparse_coo_tensor(order.repeat(2)[None], torch.cat([grad[order], grad[order]]) / 2, (6, 4))
        q.grad = grad.clone()
        opt.step()
        ref.step()
    if options.get("optimized_update"):  # eps enters unscaled: the same to within eps's effect
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    else:
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"], rtol=1e-12, atol=1e-15)


def test_lazy_weight_decay_touches_only_present_rows(backend):
    p = torch.nn.Parameter(torch.ones(5, 2, dtype=torch.float64))
    opt = fusedopt.AdamW([p], lr=0.1, weight_decay=0.5, lazy_mode=True, backend=backend)
    p.grad = torch.sparse_coo_tensor(torch.tensor([[1, 3]]), torch.zeros(2, 2, dtype=torch.float64), (5, 2))
    opt.step()
    assert torch.equal(p[[0, 2, 4]], torch.ones(3, 2, dtype=torch.float64))
    assert torch.equal(p[[1, 3]], torch.full((2, 2), 1 - 0.1 * 0.5, dtype=torch.float64))


# ------------------------------------------------------------------------ checkpoints

def _train(embeddings, optimizer, steps, offset):
    for step in range(steps):
        _embedding_step(embeddings, optimizer, _inputs(((40, 6), (17, 3)), offset + step))


def _through_a_file(state_dict):
    """A checkpoint as training code keeps one: saved, then loaded with weights_only (which
    refuses anything but plain containers, tensors and numbers), so nothing is shared."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("direction", ["fusedopt_to_torch", "torch_to_fusedopt"])
def test_state_dict_moves_both_ways_with_torch_and_training_continues(backend, direction):
    ours, theirs = _embeddings(torch.float32)
    opt = fusedopt.SparseAdam([{"params": [ours[0].weight]}, {"params": [ours[1].weight], "lr": 0.01}],
                              backend=backend)
    ref = torch.optim.SparseAdam([{"params": [theirs[0].weight]}, {"params": [theirs[1].weight], "lr": 0.01}])
    _train(ours, opt, 8, 0)
    _train(theirs, ref, 8, 0)
    saved_ours, saved_theirs = _through_a_file(opt.state_dict()), _through_a_file(ref.state_dict())
    # the same layout: torch's keys, step a Python int
    assert [sorted(g) for g in saved_ours["param_groups"]] == [sorted(g) for g in saved_theirs["param_groups"]]
    assert saved_ours["state"].keys() == saved_theirs["state"].keys()
    for key, entry in saved_theirs["state"].items():
        assert sorted(saved_ours["state"][key]) == sorted(entry)
        assert type(saved_ours["state"][key]["step"]) is int
    copies, _ = _embeddings(torch.float32)
    source = ours if direction == "fusedopt_to_torch" else theirs
    for copy, e in zip(copies, source):
        copy.load_state_dict(e.state_dict())
    if direction == "fusedopt_to_torch":
        resumed = torch.optim.SparseAdam([{"params": [copies[0].weight]}, {"params": [copies[1].weight]}])
        resumed.load_state_dict(saved_ours)
        continued = ours, opt  # torch from fusedopt's checkpoint against fusedopt going on
    else:
        resumed = fusedopt.SparseAdam([{"params": [copies[0].weight]}, {"params": [copies[1].weight]}],
                                      backend=backend)
        resumed.load_state_dict(saved_theirs)
        continued = theirs, ref  # fusedopt from torch's checkpoint against torch going on
    _train(copies, resumed, 8, 8)
    _train(*continued, 8, 8)
    for a, b in zip(copies, continued[0]):
        assert_follows(a.weight, b.weight, backend)


# ------------------------------------------------------------------------ errors

def _sparse_grad_param(dtype=torch.float32):
    p = torch.nn.Parameter(torch.randn(4, 3, dtype=dtype))
    p.grad = torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.ones(2, 3, dtype=dtype), (4, 3))
    return p


@pytest.mark.parametrize("make", [
    lambda ps, b: fusedopt.SparseAdam(ps, backend=b),
    lambda ps, b: fusedopt.Adam(ps, lazy_mode=True, backend=b),
    lambda ps, b: fusedopt.AdamW(ps, lazy_mode=True, backend=b),
], ids=["SparseAdam", "Adam", "AdamW"])
def test_dense_grads_are_refused_before_anything_changes(backend, make):
    p, dense = _sparse_grad_param(), torch.nn.Parameter(torch.randn(3))
    dense.grad = torch.randn(3)
    before = p.detach().clone()
    opt = make([p, dense], backend)
    with pytest.raises(RuntimeError, match="does not support dense gradients"):
        opt.step()
    assert torch.equal(p, before) and not opt.state[p]
    with pytest.raises(RuntimeError, match="SparseAdam does not support dense gradients"):
        torch.optim.SparseAdam([dense]).step()  # the error torch gives, for comparison


def test_without_lazy_mode_sparse_grads_keep_their_error(backend):
    p = _sparse_grad_param()
    with pytest.raises(RuntimeError, match="does not support sparse gradients; pass lazy_mode=True .*SparseAdam"):
        fusedopt.Adam([p], backend=backend).step()
    with pytest.raises(RuntimeError, match="AdamW does not support sparse gradients; pass lazy_mode=True"):
        fusedopt.AdamW([p], backend=backend).step()


def _bad(indices, values, size):
    return torch.sparse_coo_tensor(torch.tensor(indices), values, size, check_invariants=False)


@pytest.mark.parametrize("grad, error, match", [
    (lambda: _bad([[0, 4]], torch.ones(2, 3), (4, 3)), IndexError, "outside the param's shape"),
    (lambda: _bad([[-1, 2]], torch.ones(2, 3), (4, 3)), IndexError, "outside the param's shape"),
    (lambda: _bad([[0, 1000000]], torch.ones(2, 3), (4, 3)), IndexError, "outside the param's shape"),
    (lambda: _bad([[0, 1], [0, 3]], torch.ones(2), (4, 3)), IndexError, "outside the param's shape"),
    (lambda: _bad([[2, 0]], torch.ones(2, 3), (4, 3))._coalesced_(True), RuntimeError, "unsorted or repeated"),
    (lambda: _bad([[1, 1]], torch.ones(2, 3), (4, 3))._coalesced_(True), RuntimeError, "unsorted or repeated"),
], ids=["past-end", "negative", "far", "second-dim", "unsorted-flagged", "repeated-flagged"])
def test_bad_sparse_grads_raise_clear_errors_before_any_update(backend, grad, error, match):
    """Indices torch lets through with check_invariants=False (torch's own coalesce() then
    corrupts memory on a negative one): refused before torch or a kernel reads them."""
    p = torch.nn.Parameter(torch.randn(4, 3))
    before = p.detach().clone()
    p.grad = grad()
    opt = fusedopt.SparseAdam([p], backend=backend)
    with pytest.raises(error, match=match):
        opt.step()
    assert torch.equal(p, before)


@pytest.mark.parametrize("grad, match", [
    (lambda: torch.sparse_coo_tensor(torch.tensor([[0]]), torch.ones(1, 5), (4, 5)), "shape"),
    (lambda: torch.sparse_coo_tensor(torch.tensor([[0]]), torch.ones(1, 3, 1), (4, 3, 1)), "shape"),
    (lambda: torch.sparse_coo_tensor(torch.tensor([[0]]), torch.ones(1, 3, dtype=torch.float64), (4, 3)), "dtype"),
    (lambda: torch.ones(4, 3).to_sparse_csr(), "sparse COO"),
], ids=["dense-dim", "extra-dim", "dtype", "csr"])
def test_grads_unlike_their_param_are_refused(grad, match):
    """torch's .grad setter refuses these already; the row reader checks them again, since a
    grad can reach it by other ways (a hook replacing .grad's data, a subclass)."""
    from fusedopt._sparse_rows import grad_rows

    with pytest.raises(RuntimeError, match=match):
        grad_rows(grad(), torch.randn(4, 3), "SparseAdam")


def test_native_kernel_checks_indices_itself():
    """Defence in depth: the CPU entry point refuses an out-of-range index before writing."""
    from fusedopt._native import native, load_error
    from fusedopt._sparse_rows import sparse_row_batch

    if load_error or not hasattr(native, "cpu_sparse_adam"):
        pytest.skip("fusedopt._C is not built")
    p = _sparse_grad_param()
    opt = fusedopt.SparseAdam([p], backend="cpu")
    opt.step()  # creates the state
    batch = sparse_row_batch([p], [opt.state[p]], False, "test")
    bad = torch.tensor([1, 9])
    batch.table[SPARSE_INDEX_ROW] = bad.data_ptr()
    before = p.detach().clone()
    hyper = fusedopt.backends.native._native_kinds().hyper("adam", fusedopt.SparseAdam.hyper(opt.param_groups[0]))
    with pytest.raises(IndexError, match="outside"):
        native.cpu_sparse_adam(hyper, batch.table_address(), 1, 0, 1e-3, 1)
    assert torch.equal(p, before)
    assert len(batch.table) == SPARSE_TABLE_ROWS


@pytest.mark.parametrize("option", [{"max_grad_norm": 1.0}, {"clip_grad_value": 1.0}, {"master_weights": True}],
                         ids=lambda o: next(iter(o)))
def test_options_lazy_mode_cannot_honour_are_refused(option):
    with pytest.raises(ValueError, match="lazy mode"):
        fusedopt.Adam([torch.nn.Parameter(torch.randn(3))], lazy_mode=True, **option)


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": -1.0}, "Invalid learning rate"), ({"lr": 0.0}, "Invalid learning rate"),
    ({"eps": 0.0}, "Invalid epsilon value"), ({"betas": (1.0, 0.9)}, "Invalid beta parameter at index 0"),
    ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1"), ({"lr": torch.tensor([1e-3, 1e-3])}, "1-element"),
])
def test_hyperparameter_errors_are_torchs(kwargs, message):
    for cls in (fusedopt.SparseAdam, torch.optim.SparseAdam):
        with pytest.raises(ValueError, match=message):
            cls([torch.nn.Parameter(torch.randn(3))], **kwargs)


def test_sparse_and_complex_params_are_refused_as_torch_does():
    with pytest.raises(ValueError, match="SparseAdam requires dense parameter tensors"):
        fusedopt.SparseAdam([torch.zeros(3, layout=torch.sparse_coo)])
    with pytest.raises(ValueError, match="SparseAdam does not support complex parameters"):
        fusedopt.SparseAdam([torch.zeros(3, dtype=torch.complex64)])


def test_signature_and_defaults_are_torchs():
    import inspect

    ours = inspect.signature(fusedopt.SparseAdam).parameters
    theirs = inspect.signature(torch.optim.SparseAdam).parameters
    assert [n for n in ours if n != "backend"] == list(theirs)
    assert all(ours[n].default == theirs[n].default for n in theirs)
    p = torch.nn.Parameter(torch.randn(3))
    assert {k: v for k, v in fusedopt.SparseAdam([p]).defaults.items() if k not in ("backend", "lazy_mode")} \
        == torch.optim.SparseAdam([p]).defaults


# ------------------------------------------------------------------------ backends, groups, closures

def test_backend_without_16_bit_rows_says_so_and_auto_picks_one_that_has_them():
    p = _sparse_grad_param(torch.bfloat16)
    with pytest.raises(RuntimeError, match="cannot run lazy .*backend='auto' picks one that can"):
        fusedopt.SparseAdam([p], backend="cpu").step()
    q = torch.nn.Parameter(p.detach().clone())
    q.grad = p.grad.clone()
    opt = fusedopt.SparseAdam([p])  # auto: the reference runs 16-bit rows as torch does
    ref = torch.optim.SparseAdam([q])
    for _ in range(3):
        opt.step()
        ref.step()
    assert torch.equal(p, q)


def test_auto_picks_the_compiled_kernel_for_float32(monkeypatch):
    if fusedopt.backends.unusable_reason("cpu", torch.device("cpu")):
        pytest.skip("fusedopt._C is not built")
    chosen = fusedopt.backends.resolve_sparse_rows("auto", torch.device("cpu"), torch.float32)
    assert chosen.name == "cpu"


def test_param_groups_closure_and_grads_set_to_none(backend):
    ours, theirs = _embeddings(torch.float64)
    opt = fusedopt.SparseAdam([{"params": ours[0].parameters(), "lr": 0.1},
                               {"params": ours[1].parameters(), "betas": (0.5, 0.6), "maximize": True}],
                              lr=0.01, backend=backend)
    ref = torch.optim.SparseAdam([{"params": theirs[0].parameters(), "lr": 0.1},
                                  {"params": theirs[1].parameters(), "betas": (0.5, 0.6), "maximize": True}], lr=0.01)
    for step in range(20):
        inputs = _inputs(((40, 6), (17, 3)), step)
        losses = []
        for embeddings, optimizer in ((ours, opt), (theirs, ref)):
            used = embeddings if step % 4 else embeddings[:1]  # the second param's grad is None then

            def closure(embeddings=used, inputs=inputs):
                optimizer.zero_grad()
                loss = sum((e(i) ** 3).sum() for e, i in zip(embeddings, inputs))
                loss.backward()
                return loss

            losses.append(optimizer.step(closure))
        assert torch.equal(losses[0], losses[1])
        for a, b in zip(ours, theirs):
            assert_follows(a.weight, b.weight, backend, f"step {step}")
    added = torch.nn.Embedding(5, 2, sparse=True).double()
    opt.add_param_group({"params": added.parameters()})
    assert opt.param_groups[-1]["lazy_mode"]


def test_many_rows_over_threads_follow_torch(threads):
    if fusedopt.backends.unusable_reason("cpu", torch.device("cpu")):
        pytest.skip("fusedopt._C is not built")
    threads(2)
    ours, theirs = _embeddings(torch.float32, sizes=((3000, 64),))
    opt = fusedopt.SparseAdam(ours[0].parameters(), backend="cpu")
    ref = torch.optim.SparseAdam(theirs[0].parameters())
    for step in range(3):
        inputs = [torch.randint(0, 3000, (4, 600), generator=torch.Generator().manual_seed(step))]
        _embedding_step(ours, opt, inputs)
        _embedding_step(theirs, ref, inputs)
        assert_follows(ours[0].weight, theirs[0].weight, "cpu")


def test_tensor_lr_and_schedulers(backend):
    ours, theirs = _embeddings(torch.float32, sizes=((20, 4),))
    opt = fusedopt.SparseAdam(ours[0].parameters(), lr=torch.tensor(0.01), backend=backend)
    ref = torch.optim.SparseAdam(theirs[0].parameters(), lr=torch.tensor(0.01))
    schedulers = [torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.5) for o in (opt, ref)]
    for step in range(10):
        inputs = _inputs(((20, 4),), step)
        _embedding_step(ours, opt, inputs)
        _embedding_step(theirs, ref, inputs)
        for s in schedulers:
            s.step()
        # to rounding on every backend: torch computes a tensor lr's step size in float32
        # (lr * sqrt(bc2) / bc1 as 0-dim float32 tensors), fusedopt in double, as for a float lr
        assert_follows(ours[0].weight, theirs[0].weight, "any compiled backend")
    assert math.isclose(float(opt.param_groups[0]["lr"]), float(ref.param_groups[0]["lr"]))


def test_cuda_backend_says_what_its_sparse_row_kernel_cannot_run():
    """The checks of backend 'cuda' that need no GPU: 16-bit params are refused as on the
    cpu backend, a build without CUDA kernels says so, and a batch that is not on a CUDA
    device never reaches native code."""
    from fusedopt._native import build_info
    from fusedopt._sparse_rows import sparse_row_batch

    cuda = fusedopt.backends.get("cuda")
    for dtype in (torch.float16, torch.bfloat16):
        assert "float32 and float64" in cuda.sparse_rows_unsupported(dtype)
    if not build_info().get("cuda"):
        assert "without the CUDA sparse-row kernel" in cuda.sparse_rows_unsupported(torch.float32)
    p = _sparse_grad_param()
    opt = fusedopt.SparseAdam([p], backend="cpu")
    opt.step()
    before = p.detach().clone()
    batch = sparse_row_batch([p], [opt.state[p]], False, "test")
    with pytest.raises(RuntimeError, match="runs on CUDA tensors"):
        cuda.sparse_adam_update(batch, fusedopt.SparseAdam.hyper(opt.param_groups[0]), 1e-3)
    assert torch.equal(p, before)


# ----------------------------------------------------------------------------- the GPU build
_COMPILE_FOR_SM90 = r"""
import re
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fusedopt._layout import UpdateConfig
from fusedopt.backends.triton import _sparse_adam, adam

kernel = _sparse_adam._sparse_adam_kernel
for amsgrad in (False, True):
    for name, dtype in (("float32", tl.float32), ("float64", tl.float64)):
        # SparseAdam's hyper-parameters (optimized_update: torch's SparseAdam form); lazy-mode
        # Adam's with amsgrad and weight decay
        hyper = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1 if amsgrad else 0.0, amsgrad=amsgrad,
                     maximize=True, decoupled_weight_decay=False, optimized_update=not amsgrad,
                     absolute_weight_decay=False)
        scalars, options = adam.arguments(UpdateConfig(hyper, 0.1))
        constexprs = dict(SLOT=type(scalars)(*range(len(scalars))), OPTIONS=options, DTYPE=dtype,
                          BLOCK=_sparse_adam.BLOCK)
        signature = {arg: "constexpr" if arg in constexprs else "*i64" if arg.endswith("_ptr")
                     else "i32" if arg == "n" else "fp64" for arg in kernel.arg_names}
        compiled = triton.compile(ASTSource(kernel, signature=signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, enable_fp_fusion=False))
        found = sorted(set(re.findall(r"div\.(?:rn|approx|full)\.f32|sqrt\.(?:rn|approx)\.f32|fma\.rn\.f32",
                                      compiled.asm["ptx"])))
        print(name, "amsgrad" if amsgrad else "plain", *found)
"""


def test_the_triton_kernel_compiles_for_a_gpu():
    """The interpreter runs Python, not Triton's compiler, which refuses more: compile the
    sparse-row kernel for sm_90 (no GPU needed), float32 and float64, with and without
    amsgrad, and check its float32 element math is IEEE division and square root, not
    contracted into fma (the coefficients are float64 math, as on the other backends)."""
    from _compiled_triton import run_compiler

    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("with a GPU the triton-backend tests above run the compiled kernel")
    found = {tuple(line.split()[:2]): set(line.split()[2:]) for line in run_compiler(_COMPILE_FOR_SM90).splitlines()}
    assert sorted(found) == [("float32", "amsgrad"), ("float32", "plain"), ("float64", "amsgrad"),
                             ("float64", "plain")]
    for variant in ("amsgrad", "plain"):
        assert found[("float32", variant)] == {"div.rn.f32", "sqrt.rn.f32"}, variant
        assert found[("float64", variant)] == set(), variant  # no float32 math in a float64 update


def test_zero_size_rows_step_the_counter_only(backend):
    """A param with a zero-size dense dim, shape (5, 0), and a grad naming rows (of nothing):
    torch.optim.SparseAdam accepts it and only counts the step; so must every backend (the cpu
    kernel raised IndexError, reference a reshape error)."""
    def make(p):
        p.grad = torch.sparse_coo_tensor(torch.tensor([[1, 3, 1]]), torch.zeros(3, 0), (5, 0))
        return p

    ours, theirs = make(torch.nn.Parameter(torch.zeros(5, 0))), make(torch.nn.Parameter(torch.zeros(5, 0)))
    other, other_ref = _sparse_grad_param(), _sparse_grad_param()  # a real table in the same bucket
    with torch.no_grad():
        other_ref.copy_(other)
    opt = fusedopt.SparseAdam([ours, other], lr=0.1, backend=backend)
    ref = torch.optim.SparseAdam([theirs, other_ref], lr=0.1)
    for _ in range(3):
        opt.step()
        ref.step()
    assert int(opt.state_dict()["state"][0]["step"]) == ref.state[theirs]["step"] == 3
    assert opt.state[ours]["exp_avg"].shape == (5, 0)
    torch.testing.assert_close(other.detach(), other_ref.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("key", ["exp_avg", "step"])
def test_a_checkpoint_missing_a_state_key_raises_torchs_key_error(backend, key):
    """Loaded from a checkpoint that lacks one of a trained param's state keys: torch's
    SparseAdam raises KeyError at the step; fusedopt used to recreate the key at zero."""
    p = _sparse_grad_param()
    opt = fusedopt.SparseAdam([p], backend=backend)
    opt.step()
    p.grad = _sparse_grad_param().grad
    saved = opt.state_dict()
    del saved["state"][0][key]
    opt.load_state_dict(saved)
    before = p.detach().clone()
    with pytest.raises(KeyError, match=key):
        opt.step()
    assert torch.equal(p.detach(), before)
    reference = torch.optim.SparseAdam([torch.nn.Parameter(p.detach().clone())])
    reference.load_state_dict(saved)
    reference.param_groups[0]["params"][0].grad = p.grad.clone()
    with pytest.raises(KeyError):
        reference.step()
