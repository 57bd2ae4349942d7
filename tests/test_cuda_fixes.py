"""Issue 9's CUDA fixes: what needs a GPU, and what a build with CUDA kernels shows without one.

On a GPU (marked `cuda`, skipped elsewhere):
- the CUDA kernels compute the CPU kernels' bits (both round every operation as written:
  -ffp-contract=off and --fmad=false, and fusedopt::step_power instead of two pows),
  across the option grid, the dtypes, master weights, GradScaler and its skipped steps,
  misaligned tensors, sizes around chunk boundaries and more tensors than one launch of
  the prologue or of the update carries;
- the chunk size changes no bit;
- a step captured in a CUDA graph with a tensor learning rate follows the tensor when it
  is changed between replays, as eager steps do.
With CUDA kernels built (no GPU needed): the chunk size reaches the planner and is checked.
"""
import pytest
import torch

import fusedopt
import fusedopt.backends
from fusedopt._native import build_info, native

from _compare import ALL_CASES, REPRESENTATIVE_CASES

BUILT_WITH_CUDA = bool(build_info().get("cuda"))
gpu = pytest.mark.skipif(not (torch.cuda.is_available() and BUILT_WITH_CUDA),
                         reason="needs a CUDA GPU and fusedopt's CUDA kernels")
_skip_without_cuda_build = pytest.mark.skipif(not BUILT_WITH_CUDA, reason="fusedopt was built without CUDA kernels")


def needs_cuda_build(test):
    """A check of the CUDA build that needs no GPU: it runs in CI, and in the GPU check too."""
    return pytest.mark.cuda(_skip_without_cuda_build(test))

# Sizes around the default chunk (8,192 float32 elements) and the 16-byte vectors, an
# empty tensor; the last is placed one element past an aligned address.
SIZES = [0, 1, 7, 4097, 8191, 8193, 16385, 70001, 4099]
MISALIGNED = len(SIZES) - 1
STEPS = 4


def _make(device, dtype, sizes, seed):
    generator = torch.Generator().manual_seed(seed)
    params = []
    for i, n in enumerate(sizes):
        values = torch.randn(n, generator=generator).to(dtype)
        if i == MISALIGNED and len(sizes) == len(SIZES):
            p = torch.empty(n + 1, dtype=dtype, device=device)[1:]
            p.copy_(values)
        else:
            p = values.to(device)
        params.append(p.requires_grad_())
    return params


def _grads(sizes, dtype, step, scale=1.0):
    generator = torch.Generator().manual_seed(1000 + step)
    return [(torch.randn(n, generator=generator) * scale).to(dtype) for n in sizes]


def _run(case, device, dtype, sizes=SIZES, master=False, scaler_scale=None, inf_step=None, **extra):
    backend = "cuda" if device == "cuda" else "cpu"
    params = _make(device, dtype, sizes, seed=3)
    kwargs = dict(master_weights=True) if master else {}
    optimizer = case.fused(params, backend, **kwargs, **extra)
    scaler = None
    if scaler_scale is not None:
        scaler = torch.amp.GradScaler(device, init_scale=scaler_scale, growth_interval=1000)
    for step in range(STEPS):
        grads = _grads(sizes, dtype, step, scaler_scale or 1.0)
        if step == inf_step and sizes[-1] > 3:
            grads[-1][3] = float("inf")
        for p, g in zip(params, grads):
            p.grad = g.to(device)
        if scaler is None:
            optimizer.step()
        else:
            scaler.scale(torch.ones((), device=device))
            scaler.step(optimizer)
            scaler.update()
    return params, optimizer


def _assert_same_bits(run, other_run, what):
    """Params, grads (written back under GradScaler) and every state tensor, bit for bit."""
    (params, optimizer), (other_params, other_optimizer) = run, other_run
    for i, (p, q) in enumerate(zip(params, other_params)):
        assert torch.equal(p.detach().cpu(), q.detach().cpu()), f"{what}: param {i}"
        assert torch.equal(p.grad.cpu(), q.grad.cpu()), f"{what}: grad {i}"
        for key, value in optimizer.state[p].items():
            assert torch.equal(value.cpu(), other_optimizer.state[q][key].cpu()), f"{what}: param {i} state {key}"


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", ALL_CASES, ids=str)
def test_cuda_computes_the_cpu_kernels_bits(case, dtype):
    _assert_same_bits(_run(case, "cpu", dtype), _run(case, "cuda", dtype), f"{case} {dtype}")


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", REPRESENTATIVE_CASES, ids=str)
@pytest.mark.parametrize("master", [False, True], ids=["plain", "master"])
def test_cuda_bits_with_grad_scaler_and_master_weights(case, dtype, master):
    run = dict(dtype=dtype, master=master, scaler_scale=3.0, inf_step=1)
    _assert_same_bits(_run(case, "cpu", **run), _run(case, "cuda", **run), f"{case} {dtype} master={master}")


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("case", REPRESENTATIVE_CASES, ids=str)
def test_cuda_bits_with_more_tensors_than_one_launch_carries(case):
    """2,000 tensors: several launches of the prologue (about 480 counters each in the
    classic parameter block) and, with the 4 KB block, of the update."""
    sizes = [(i * 37) % 300 for i in range(2000)]
    run = dict(dtype=torch.float32, sizes=sizes, scaler_scale=2.0**4)
    _assert_same_bits(_run(case, "cpu", **run), _run(case, "cuda", **run), str(case))


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("chunk_bytes", [4096, 65536, 256 * 1024])
def test_the_chunk_size_changes_no_bit(chunk_bytes, monkeypatch):
    case = REPRESENTATIVE_CASES[0]
    expected = _run(case, "cuda", torch.float32)
    monkeypatch.setattr(fusedopt.backends.get("cuda"), "chunk_bytes", chunk_bytes)
    _assert_same_bits(expected, _run(case, "cuda", torch.float32), f"chunk {chunk_bytes}")


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "RMSprop"])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_captured_step_follows_the_lr_tensor(name, backend):
    """torch's capturable fused Adam reads lr from a device tensor: so do fusedopt's cuda and
    triton backends, so a graph replayed after a scheduler changed the tensor uses the new
    value (it used to be read with .item() at capture time)."""
    if backend == "triton" and fusedopt.backends.unusable_reason("triton", torch.device("cuda")):
        pytest.skip("triton unusable on this GPU")
    hyper = {"SGD": {"momentum": 0.9}, "RMSprop": {"momentum": 0.5}}.get(name, {})
    schedule = [1e-2, 1e-2, 5e-3, 1e-3, 1e-3, 2e-4]

    def make():
        params = _make("cuda", torch.float32, [4097, 33], seed=5)
        lr = torch.tensor(schedule[0], device="cuda")
        grads = [torch.zeros_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g
        return params, grads, lr, getattr(fusedopt, name)(params, lr=lr, backend=backend, **hyper)

    eager_params, eager_grads, eager_lr, eager = make()
    graph_params, graph_grads, graph_lr, captured = make()
    inputs = [_grads([4097, 33], torch.float32, step) for step in range(len(schedule))]
    # Warm up on a side stream (state created, workspace allocated), then capture one step.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for g, x in zip(graph_grads, inputs[0]):
            g.copy_(x)
        captured.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured.step()
    for g, x in zip(eager_grads, inputs[0]):
        g.copy_(x)
    eager.step()  # the warm-up step's twin
    for step in range(1, len(schedule)):
        for lr in (eager_lr, graph_lr):
            lr.fill_(schedule[step])
        for grads in (eager_grads, graph_grads):
            for g, x in zip(grads, inputs[step]):
                g.copy_(x)
        eager.step()
        graph.replay()
    torch.cuda.synchronize()
    for p, q in zip(eager_params, graph_params):
        assert torch.equal(p, q)


# ----------------------------------------------------------------------------- no GPU needed
@needs_cuda_build
def test_build_reports_its_chunk_size_and_workspace():
    info = build_info()
    assert info["cuda_default_chunk_bytes"] % 4096 == 0
    assert info["cuda_workspace_bytes_per_tensor"] >= 96
    assert fusedopt.info()["cuda_kernels"]["default_chunk_bytes"] == info["cuda_default_chunk_bytes"]


@needs_cuda_build
@pytest.mark.parametrize("chunk_bytes,element_bytes", [(4096, 4), (65536, 2), (256 * 1024, 8)])
def test_the_planner_cuts_chunks_of_the_given_size(chunk_bytes, element_bytes):
    numels = [0, 1, chunk_bytes // element_bytes, chunk_bytes // element_bytes + 1, 100000]
    plan = native.cuda_launch_plan(numels, 5, element_bytes, chunk_bytes=chunk_bytes)
    chunk = chunk_bytes // element_bytes
    assert plan["chunk_elements"] == chunk
    assert sum(plan["chunks_per_launch"]) == sum(-(-n // chunk) for n in numels)
    assert native.cuda_launch_plan(numels, 5, element_bytes)["chunk_elements"] == (
        build_info()["cuda_default_chunk_bytes"] // element_bytes)


@needs_cuda_build
@pytest.mark.parametrize("chunk_bytes", [1000, 2048, 4096 * 3 + 1, 2**31])
def test_a_chunk_size_that_is_no_multiple_of_4096_is_refused(chunk_bytes):
    with pytest.raises(ValueError, match="multiple of 4096"):
        native.cuda_launch_plan([10], 5, 4, chunk_bytes=chunk_bytes)
