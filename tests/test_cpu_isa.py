"""The CPU kernels are compiled once per instruction set (baseline x86-64, AVX2, AVX-512)
and picked at run time. Without FMA contraction every variant must compute the same bits;
FUSEDOPT_CPU_ISA forces a lesser one, so this also runs the portable path that CPUs
without AVX2 get; FUSEDOPT_CPU_GATHER=0|1 turns the 8-bit states' gather instructions off or
on (by default on Intel CPUs only), so both lookup paths run whatever the machine."""
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

    def run(cls, options, dtype, sizes, **extra):
        generator = torch.Generator().manual_seed(0)
        params = [torch.randn(n, generator=generator).to(dtype) for n in sizes]
        opt = cls(params, backend="cpu", max_grad_norm=50.0, **options, **extra)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator).to(dtype)
            opt.step()
        for p in params:
            digest.update(p.float().numpy().tobytes())
            for value in opt.state[p].values():
                digest.update(value.float().numpy().tobytes())

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
                run(cls, options, dtype, (1, 17, 1000, 70001), master_weights=master)
    # 8-bit states: the table lookups, which may use gather instructions (FUSEDOPT_CPU_GATHER)
    int8_cases = [
        (fusedopt.Adam, dict(lr=1e-2, amsgrad=True)),
        (fusedopt.SGD, dict(lr=1e-2, momentum=0.9)),
        (fusedopt.RMSprop, dict(lr=1e-3, momentum=0.5)),  # centered RMSprop refuses 8-bit states
        (fusedopt.LAMB, dict(lr=1e-2)),
    ]
    for dtype in (torch.float32, torch.bfloat16):
        for cls, options in int8_cases:
            run(cls, options, dtype, (17, 5000, 70001), state_dtype="int8")
    print(digest.hexdigest())
""")


def _digest(isa: str, gathers: str, folder) -> str:
    """The children import the fusedopt this process imported: they start in an empty folder
    (`python -c` puts the working directory first on sys.path, and from the repository root
    after a non-editable install that is the source tree, without `_C`), with that
    package's folder first on PYTHONPATH."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fusedopt.__file__)))
    env = dict(os.environ, FUSEDOPT_CPU_ISA=isa, FUSEDOPT_CPU_GATHER=gathers,
               PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    check = subprocess.run([sys.executable, "-c", "import fusedopt; print(fusedopt.__file__);"
                            " print(fusedopt.info()['cpu_kernels']['instruction_set']);"
                            " print(fusedopt.info()['cpu_kernels']['table_gathers'])"],
                           cwd=folder, env=env, capture_output=True, text=True, check=True)
    assert check.stdout.split() == [os.path.abspath(fusedopt.__file__), isa, str(gathers == "1")]
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=folder, env=env, capture_output=True, text=True,
                            check=True)
    return result.stdout.strip()


def test_every_instruction_set_computes_the_same_bits(tmp_path):
    # Every variant built (a sanitizer build leaves out AVX2 on an AVX-512 machine), with the
    # gather instructions (8-bit states' lookups) on and off in the vector ones.
    built = fusedopt.info()["cpu_kernels"]["instruction_sets_built"]
    sanitized = "libasan" in os.environ.get("LD_PRELOAD", "")  # .ci/sanitize's build
    assert built == (["baseline", "avx512"] if sanitized else ["baseline", "avx2", "avx512"]), built
    variants = tuple((isa, gathers) for isa in built for gathers in (("0",) if isa == "baseline" else ("0", "1")))
    digests = {variant: _digest(*variant, tmp_path) for variant in variants}
    assert len(set(digests.values())) == 1, digests
    assert len(hashlib.sha256().hexdigest()) == len(digests[variants[0]])  # a real digest was printed
