"""Adafactor on the compiled CUDA kernels (csrc/cuda/factored.cu) on a GPU: backend='cuda'
against torch.optim.Adafactor step by step (float64 to rounding, float32 close at every
step) and against the cpu backend's bits; lr as a float64 CUDA tensor; auto picks cuda.
Skipped without a GPU; the same kernels run on the CPU in tests/test_cuda_adafactor_host.py."""
import pytest
import torch

fusedopt = pytest.importorskip("fusedopt")

from fusedopt import backends  # noqa: E402
from test_cuda import pytestmark  # noqa: E402,F401  (the same marks: cuda, a GPU, a CUDA build)

# Vectors, a 0-dim param, 2-D over several items per slice, a row longer than an item, lead
# dims, 1xN, Nx1, zero-size params.
SHAPES = [(70000,), (7,), (), (300, 250), (2, 40000), (3, 40, 70), (1, 50), (50, 1), (0,), (0, 5), (17, 33)]
OPTIONS = {
    "defaults": {},
    "weight_decay-maximize": dict(lr=0.05, beta2_decay=-0.6, eps=(1e-20, 2e-3), d=1.2, weight_decay=0.1,
                                  maximize=True),
    "lr-tensor": dict(lr="tensor", eps=(1e-4, 1e-3), weight_decay=0.02),
}


def _options(options, device):
    options = dict(options)
    if options.get("lr") == "tensor":
        options["lr"] = torch.tensor(0.03, dtype=torch.float64, device=device)
    return options


def _run(options, dtype, steps=22):
    torch.manual_seed(0)
    values = [torch.randn(s, dtype=torch.float64) for s in SHAPES]
    gpu = [torch.nn.Parameter(v.to(dtype).cuda()) for v in values]
    cpu = [torch.nn.Parameter(v.to(dtype).clone()) for v in values]
    ref = [torch.nn.Parameter(v.to(dtype).cuda()) for v in values]
    gpu_opt = fusedopt.Adafactor(gpu, backend="cuda", **_options(options, "cuda"))
    cpu_opt = fusedopt.Adafactor(cpu, backend="cpu", **_options(options, "cpu"))
    ref_opt = torch.optim.Adafactor(ref, foreach=False, **_options(options, "cuda"))
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        for a, b, c in zip(gpu, cpu, ref):
            grad = torch.randn(a.shape, generator=g, dtype=torch.float64).to(dtype)
            a.grad, b.grad, c.grad = grad.cuda(), grad.clone(), grad.cuda()
        gpu_opt.step()
        cpu_opt.step()
        ref_opt.step()
        yield step, (gpu, gpu_opt), (cpu, cpu_opt), (ref, ref_opt)


@pytest.mark.parametrize("options", list(OPTIONS))
def test_float64_matches_torch_to_rounding(options):
    for step, (gpu, opt), _, (ref, ref_opt) in _run(OPTIONS[options], torch.float64):
        for i, (p, q) in enumerate(zip(gpu, ref)):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13, msg=f"step {step + 1} param {i}")
            for key, value in ref_opt.state[q].items():
                torch.testing.assert_close(opt.state[p][key].double(), value.double(), rtol=1e-12, atol=1e-14,
                                           msg=f"step {step + 1} param {i} {key}")


@pytest.mark.parametrize("options", list(OPTIONS))
def test_float32_matches_torch_at_every_step(options):
    for step, (gpu, _), _, (ref, _) in _run(OPTIONS[options], torch.float32):
        for i, (p, q) in enumerate(zip(gpu, ref)):
            torch.testing.assert_close(p, q, rtol=2e-5, atol=2e-6, msg=f"step {step + 1} param {i}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("options", list(OPTIONS))
def test_cpu_backends_bits(options, dtype):
    """The CPU kernel's bits: same items, same order in every sum. The step scalars use the
    platform's pow (CUDA's here, the C library's on the CPU); a last-place difference there
    would show in this test first."""
    for step, (gpu, opt), (cpu, cpu_opt), _ in _run(OPTIONS[options], dtype):
        for i, (p, q) in enumerate(zip(gpu, cpu)):
            assert_same_bits(p, q, f"step {step + 1} param {i} {tuple(q.shape)}")
            for key, value in cpu_opt.state[q].items():
                assert_same_bits(opt.state[p][key], value, f"step {step + 1} param {i} {key}")


def assert_same_bits(actual, expected, what):
    int_type = {2: torch.int16, 4: torch.int32, 8: torch.int64}[expected.element_size()]
    a, e = actual.detach().cpu().reshape(-1), expected.detach().cpu().reshape(-1)
    differs = a.view(int_type) != e.view(int_type)
    assert not bool(differs.any()), f"{what}: {int(differs.sum())} of {a.numel()} elements differ"


def test_auto_picks_cuda_and_no_host_sync():
    p = torch.nn.Parameter(torch.randn(64, 32, device="cuda"))
    opt = fusedopt.Adafactor([p], lr=torch.tensor(0.01, dtype=torch.float64, device="cuda"))
    assert backends.resolve("auto", p.device, "factored").name == "cuda"
    p.grad = torch.randn_like(p)
    opt.step()  # the first step allocates the workspace
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert float(opt.state[p]["step"]) == 2.0
