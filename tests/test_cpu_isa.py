"""The CPU kernels are compiled once per instruction set (baseline x86-64, AVX2, AVX-512)
and picked at run time. Without FMA contraction every variant must compute the same bits;
FUSEDOPT_CPU_ISA forces a lesser one, so this also runs the portable path that CPUs
without AVX2 get."""
import hashlib
import os
import subprocess
import sys
import textwrap

import pytest

import fusedopt

pytestmark = pytest.mark.skipif(fusedopt.info()["cpu_kernels"]["instruction_set"] != "avx512",
                                reason="needs a CPU with AVX-512 to compare all three variants")

# Every optimizer with its options on, all four dtypes, master weights and a clipped,
# scaled step; sizes cover vector bodies and scalar tails. Prints a digest of the results.
SCRIPT = textwrap.dedent("""
    import hashlib, torch, fusedopt
    torch.set_num_threads(2)
    digest = hashlib.sha256()
    cases = [
        (fusedopt.AdamW, dict(lr=1e-2, amsgrad=True, weight_decay=0.1)),
        (fusedopt.Adam, dict(lr=1e-2, optimized_update=True, maximize=True, weight_decay=0.1)),
        (fusedopt.SGD, dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=0.1)),
        (fusedopt.SGD, dict(lr=1e-2, momentum=0.9, dampening=0.3)),
        (fusedopt.RMSprop, dict(lr=1e-3, centered=True, momentum=0.5, weight_decay=0.1)),
    ]
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for cls, options in cases:
            for master in ((False, True) if dtype in (torch.float16, torch.bfloat16) else (False,)):
                generator = torch.Generator().manual_seed(0)
                params = [torch.randn(n, generator=generator).to(dtype) for n in (1, 17, 1000, 70001)]
                opt = cls(params, backend="cpu", master_weights=master, max_grad_norm=50.0, **options)
                for _ in range(5):
                    for p in params:
                        p.grad = torch.randn(p.shape, generator=generator).to(dtype)
                    opt.step()
                for p in params:
                    digest.update(p.float().numpy().tobytes())
                    for value in opt.state[p].values():
                        digest.update(value.float().numpy().tobytes())
    print(digest.hexdigest())
""")


def _digest(isa: str, folder) -> str:
    """The children import the fusedopt this process imported: they start in an empty folder
    (`python -c` puts the working directory first on sys.path, and from the repository root
    after a non-editable install that is the source tree, without `_C`), with that
    package's folder first on PYTHONPATH."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fusedopt.__file__)))
    env = dict(os.environ, FUSEDOPT_CPU_ISA=isa,
               PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    check = subprocess.run([sys.executable, "-c", "import fusedopt; print(fusedopt.__file__);"
                            " print(fusedopt.info()['cpu_kernels']['instruction_set'])"],
                           cwd=folder, env=env, capture_output=True, text=True, check=True)
    assert check.stdout.split() == [os.path.abspath(fusedopt.__file__), isa]
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=folder, env=env, capture_output=True, text=True,
                            check=True)
    return result.stdout.strip()


def test_every_instruction_set_computes_the_same_bits(tmp_path):
    digests = {isa: _digest(isa, tmp_path) for isa in ("baseline", "avx2", "avx512")}
    assert len(set(digests.values())) == 1, digests
    assert len(hashlib.sha256().hexdigest()) == len(digests["baseline"])  # a real digest was printed
