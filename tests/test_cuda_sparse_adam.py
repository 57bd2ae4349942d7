"""Lazy (sparse-row) Adam on the compiled CUDA kernel (csrc/cuda/sparse_adam.cu) on a GPU:
the CPU kernel's bits, step after step, for several tables of one bucket with uncoalesced
grads (repeated indices, empty grads), float32 and float64, Adam's options; lr as a float64
CUDA tensor; no host synchronisation inside the backend call. Skipped without a GPU; the
same kernel runs on the CPU in tests/test_cuda_host.py (fusedopt._cuda_host)."""
import pytest
import torch

fusedopt = pytest.importorskip("fusedopt")

from test_cuda import pytestmark  # noqa: E402,F401  (the same marks: cuda, a GPU, a CUDA build)

# (shape, sparse dims): embedding tables, rows of 12, element rows, a 1-D param, and a
# table whose grad is always empty.
TABLES = [((1000, 64), 1), ((17, 3), 1), ((9, 4, 3), 1), ((5, 6), 2), ((11,), 1), ((8, 5), 1)]
OPTIMIZERS = {
    "SparseAdam": lambda ps, b: fusedopt.SparseAdam(ps, lr=0.01, backend=b),
    "SparseAdam-maximize": lambda ps, b: fusedopt.SparseAdam(ps, lr=0.05, betas=(0.8, 0.99), eps=1e-6,
                                                             maximize=True, backend=b),
    "Adam-weight_decay-amsgrad": lambda ps, b: fusedopt.Adam(ps, lr=0.01, weight_decay=0.1, amsgrad=True,
                                                             lazy_mode=True, backend=b),
    "AdamW-weight_decay": lambda ps, b: fusedopt.AdamW(ps, lr=0.02, weight_decay=0.3, lazy_mode=True, backend=b),
}


def grads_of_step(step, dtype, device):
    g = torch.Generator().manual_seed(700 + step)
    grads = []
    for i, (shape, sparse_dims) in enumerate(TABLES):
        nnz = 0 if step % 7 == 5 or i == len(TABLES) - 1 else int(torch.randint(0, 40, (), generator=g))
        indices = torch.stack([torch.randint(0, min(n, 30), (nnz,), generator=g) for n in shape[:sparse_dims]])
        values = torch.randn(nnz, *shape[sparse_dims:], generator=g, dtype=torch.float64).to(dtype)
        grads.append(torch.sparse_coo_tensor(indices, values, shape, device=device))
    return grads


def assert_same_bits(actual, expected, what):
    int_type = {4: torch.int32, 8: torch.int64}[expected.element_size()]
    a, e = actual.detach().cpu().contiguous(), expected.detach().cpu().contiguous()
    differs = a.view(int_type) != e.view(int_type)
    assert not bool(differs.any()), f"{what}: {int(differs.sum())} of {a.numel()} elements differ"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_cuda_kernel_has_the_cpu_kernels_bits(name, dtype):
    torch.manual_seed(0)
    values = [torch.randn(shape, dtype=torch.float64).to(dtype) for shape, _ in TABLES]
    cpu = [torch.nn.Parameter(v.clone()) for v in values]
    gpu = [torch.nn.Parameter(v.cuda()) for v in values]
    cpu_opt, gpu_opt = OPTIMIZERS[name](cpu, "cpu"), OPTIMIZERS[name](gpu, "cuda")
    for step in range(22):
        for p, q, grad in zip(cpu, gpu, grads_of_step(step, dtype, "cpu")):
            p.grad, q.grad = grad.clone(), grad.cuda()
        cpu_opt.step()
        gpu_opt.step()
        for i, (p, q) in enumerate(zip(cpu, gpu)):
            assert_same_bits(q, p, f"step {step} param {i}")
            for key, value in cpu_opt.state[p].items():
                assert_same_bits(gpu_opt.state[q][key], value, f"step {step} param {i} state {key!r}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_float64_lr_tensor_on_the_device_and_no_host_sync(dtype):
    """The backend call itself (the batch already built) queues its launches without a
    host sync, reading lr from a float64 CUDA tensor: the CPU kernel's bits with that lr."""
    from fusedopt._sparse_rows import sparse_row_batch
    from fusedopt.optim._plan import group_hyper

    torch.manual_seed(1)
    values = [torch.randn(shape, dtype=torch.float64).to(dtype) for shape, _ in TABLES]
    cpu = [torch.nn.Parameter(v.clone()) for v in values]
    gpu = [torch.nn.Parameter(v.cuda()) for v in values]
    cpu_opt, gpu_opt = OPTIMIZERS["Adam-weight_decay-amsgrad"](cpu, "cpu"), OPTIMIZERS["Adam-weight_decay-amsgrad"](
        gpu, "cuda")
    lr = torch.zeros((), dtype=torch.float64, device="cuda")
    for step in range(6):
        rate = 0.03 / (step + 1)
        lr.fill_(rate)
        grads = grads_of_step(step, dtype, "cpu")
        for p, q, grad in zip(cpu, gpu, grads):
            p.grad, q.grad = grad.clone(), grad.cuda()
        if step == 0:  # creates the state
            cpu_opt.step()
            gpu_opt.step()
            continue
        for params, optimizer, step_lr in ((cpu, cpu_opt, rate), (gpu, gpu_opt, lr)):
            group = optimizer.param_groups[0]
            batch = sparse_row_batch(params, [optimizer.state[p] for p in params], True, "test")
            backend = fusedopt.backends.get(group["backend"])
            hyper = group_hyper(optimizer, group)
            if params is gpu:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    backend.sparse_adam_update(batch, hyper, step_lr)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            else:
                backend.sparse_adam_update(batch, hyper, step_lr)
        for i, (p, q) in enumerate(zip(cpu, gpu)):
            assert_same_bits(q, p, f"step {step} param {i}")
            for key, value in cpu_opt.state[p].items():
                assert_same_bits(gpu_opt.state[q][key], value, f"step {step} param {i} state {key!r}")


def test_auto_picks_the_cuda_kernel_for_float32_and_float64():
    for dtype in (torch.float32, torch.float64):
        assert fusedopt.backends.resolve_sparse_rows("auto", torch.device("cuda"), dtype).name == "cuda"
