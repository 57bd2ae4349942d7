"""The CUDA kernels as ptxas compiles them, checked without a GPU (issue 9, part 2).

Each optimizer's CUDA unit (csrc/cuda/update_unit.cu.in for every header of
csrc/include/fusedopt/optimizers, as CMakeLists.txt generates it) is compiled for sm_90
with the flags CMakeLists.txt uses, keeping ptxas's resource report (-Xptxas -v) and the PTX. Every update kernel
(and the norm-pass kernel of an optimizer with one: LAMB) must
- spill nothing and use no stack (local memory: a spill per element of a memory-bound loop
  costs as much as the update's own traffic),
- fit the blocks of 256 threads its launch bounds ask for on a multiprocessor (the PTX's
  .minnctapersm, the optimizer's min_blocks: usually 4, at most 64 registers, for float32
  math; 3, at most 80, for float64) -- and ask for at least 3 (the 8-bit-state update
  kernels: 2, see minimum_blocks),
- contain no fused multiply-add in its PTX: the CPU kernels are built with
  -ffp-contract=off, and the CUDA ones must round every operation of the shared math the
  same way (--fmad=false) to compute the same bits. (The prologue kernels keep the
  explicit fma of fusedopt::step_power.)
The registers of every kernel are printed. Slow (a minute or two on two cores).
"""
import concurrent.futures
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")
SOURCES = tuple(sorted(header.stem for header in (ROOT / "csrc/include/fusedopt/optimizers").glob("*.h")))
# The optimizers with a norm pass (kNormPass = true): their units also hold cuda/norms.cuh's kernels.
NORM_PASS_SOURCES = tuple(s for s in SOURCES if re.search(
    r"kNormPass\s*=\s*true", (ROOT / f"csrc/include/fusedopt/optimizers/{s}.h").read_text()))
ARCH = "90"
# CMakeLists.txt's FUSEDOPT_CUDA_FLAGS (test_flags_match_cmakelists keeps them in step).
FLAGS = ("-O3", "--expt-relaxed-constexpr", "--fmad=false")
THREADS_PER_BLOCK, REGISTERS_PER_SM = 256, 65536


def max_registers(blocks: int) -> int:
    """Registers a thread may use for `blocks` blocks to fit (allocated in units of 8)."""
    return REGISTERS_PER_SM // (THREADS_PER_BLOCK * blocks) // 8 * 8

# xdist_group: under pytest-xdist (--dist loadgroup) this file's tests share one worker, and so
# the module fixture's compile of every unit (minutes) runs once.
pytestmark = [pytest.mark.slow, pytest.mark.no_gpu_needed, pytest.mark.xdist_group("ptxas"),
              pytest.mark.skipif(NVCC is None, reason="needs nvcc (the CUDA toolkit)")]


def _compile(source: str, out: Path) -> str:
    keep = out / source
    keep.mkdir()
    unit = keep / f"update_{source}.cu"  # as CMakeLists.txt's configure_file writes it
    unit.write_text((ROOT / "csrc/cuda/update_unit.cu.in").read_text().replace("@FUSEDOPT_KIND@", source))
    command = [NVCC, "-std=c++17", *FLAGS, f"-I{ROOT / 'csrc/include'}", f"-I{ROOT / 'csrc'}",
               f"-gencode=arch=compute_{ARCH},code=sm_{ARCH}", "-Xptxas", "-v", "--keep", "--keep-dir", str(keep),
               "-c", str(unit), "-o", str(keep / f"{source}.o")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stderr


def parse_resource_usage(report: str) -> dict:
    """{mangled kernel name: {"registers", "stack", "spill_stores", "spill_loads"}} from -Xptxas -v."""
    kernels, current = {}, None
    for line in report.splitlines():
        match = re.search(r"Compiling entry function '([^']+)' for 'sm_\d+'", line)
        if match:
            current = kernels.setdefault(match.group(1), {})
            continue
        match = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if match and current is not None:
            current.update(stack=int(match[1]), spill_stores=int(match[2]), spill_loads=int(match[3]))
        match = re.search(r"Used (\d+) registers", line)
        if match and current is not None:
            current["registers"] = int(match[1])
    return kernels


def ptx_entries(ptx: str) -> dict:
    """{entry name: its PTX body} of a .ptx file."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"\.entry\s+(\S+?)\(", ptx)]
    ends = [m.start() for m in re.finditer(r"\n(?:\.visible\s+|\.weak\s+)*\.(?:entry|func)\s", ptx)] + [len(ptx)]
    entries = {}
    for start, name in starts:
        end = min(e for e in ends if e > start + 1)
        entries[name] = ptx[start:end]
    return entries


def readable(name: str) -> str:
    """_ZN8fusedopt4cuda19multi_tensor_kernelINS0_13UpdateChunkOpINS_10optimizers4adamEffEELl4096E...
    -> a short label."""
    kind = ("norms" if "NormChunkOp" in name and "multi_tensor_kernel" in name else
            "update" if "multi_tensor_kernel" in name else "prologue" if "prologue_kernel" in name else name)
    op = re.search(r"(Update|UpdateInt8|Norm)ChunkOpINS_10optimizers\d+([a-z0-9_]+)E(.*?)EELl", name)
    types = {"f": "float", "d": "double", "NS_4HalfE": "half", "NS_8BFloat16E": "bfloat16"}
    storage = re.findall(r"NS_4HalfE|NS_8BFloat16E|S\d*_|[fd]", op.group(3)) if op else []
    names = []
    for t in storage:
        names.append(names[-1] if t.startswith("S") else types[t])
    limit = re.search(r"ELl(\d+)EE", name)
    # The bools mangle as Lb0E / Lb1E. UpdateChunkOp<Kind, S, SS, master copy, stochastic
    # rounding>; UpdateInt8ChunkOp<Kind, S, master copy, stochastic rounding> (8-bit states);
    # NormChunkOp<Kind, S, SS, master copy, 8-bit states>.
    flags = re.findall(r"Lb([01])E", op.group(3)) if op else []
    suffix = ""
    if op and op.group(1) == "UpdateInt8":
        names.append("int8")
        suffix = (" master" if flags[0] == "1" else "") + (" sr" if flags[1] == "1" else "")
    elif op and op.group(1) == "Norm":
        suffix = (" master" if flags[0] == "1" and names[0] == names[-1] else "") + (" int8" if flags[1] == "1" else "")
    elif op and len(flags) == 2 and flags[1] == "1":
        suffix = " sr"
    return (f"{kind:8s} {op.group(2) if op else '?':7s} {'/'.join(names) + suffix:15s} "
            f"{limit.group(1) if limit else ''}")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("ptxas")
    with concurrent.futures.ThreadPoolExecutor(len(SOURCES)) as pool:
        reports = dict(zip(SOURCES, pool.map(lambda s: _compile(s, out), SOURCES)))
    usage, ptx = {}, {}
    for source in SOURCES:
        usage.update(parse_resource_usage(reports[source]))
        (ptx_file,) = (out / source).glob(f"update_{source}*.ptx")
        ptx.update(ptx_entries(ptx_file.read_text()))
    return usage, ptx


def test_flags_match_cmakelists():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    (line,) = [line for line in cmake.splitlines() if line.strip().startswith("set(FUSEDOPT_CUDA_FLAGS")]
    assert line.split("FUSEDOPT_CUDA_FLAGS", 1)[1].strip(" )").split() == list(FLAGS)


# fusedopt/common.h's dispatch_storage. Storage (param/states/master): f64; f32, f32/bf16;
# f16, f16/f32/master, f16/f32, f16/bf16, f16/bf16/master; bf16, bf16/f32/master, bf16/f32,
# bf16/bf16/master (bf16 states: state_dtype=torch.bfloat16; 16-bit params with f32 states and
# no master copy: an "int8" group's small tensors).
STORAGE_COMBINATIONS = 12
# The update kernels add two: bf16 params without a master copy rounded stochastically
# (bf16_stochastic_round), bf16/bf16 and bf16/f32 storage.
UPDATE_COMBINATIONS = STORAGE_COMBINATIONS + 2


# 8-bit states (state_dtype="int8", float32 math): params float32; float16 and bfloat16 with
# or without a float32 master copy; bfloat16 rounded stochastically. Every optimizer's unit
# holds them (UpdateInt8ChunkOp); the norm pass (NormChunkOp<..., true>) has all but the
# stochastic rounding, which the norm pass does not read.
INT8_UPDATE_COMBINATIONS = 6
INT8_NORM_COMBINATIONS = 6


def min_blocks(body: str) -> int:
    match = re.search(r"\.minnctapersm\s+(\d+)", body)
    return int(match.group(1)) if match else 1


# Kernels allowed 2 blocks per multiprocessor instead of 3: Rprop's float64 update needs 86
# registers (3 blocks give 80, and spill); float64 Rprop on a GPU is rare enough that two
# blocks beat a spill. Known gap, named here so no other kernel slips below 3 unnoticed.
# The 8-bit update kernels ("<param>/int8" in their labels) ask for 2 by design
# (cuda/update_int8.cuh: 8 elements per thread, a warp per quantization block, 72-103
# registers); untuned until a GPU measures them against 3.
FEWER_BLOCKS = ("rprop   double/double", "/int8")


def minimum_blocks(readable_name: str) -> int:
    return 2 if any(kernel in readable_name for kernel in FEWER_BLOCKS) else 3


def element_kernels(kernels: dict) -> dict:
    """The update kernels and the norm-pass kernels, checked: one per optimizer (or optimizer
    with a norm pass) x storage combination x parameter-block size."""
    chosen = {name: k for name, k in kernels.items() if "multi_tensor_kernel" in name}
    update, int8_update = (sum(f"{op}ChunkOp" in name for name in chosen) for op in ("Update", "UpdateInt8"))
    assert update == len(SOURCES) * UPDATE_COMBINATIONS * 2
    assert int8_update == len(SOURCES) * INT8_UPDATE_COMBINATIONS * 2
    norms = sum("NormChunkOp" in name for name in chosen)
    assert norms == len(NORM_PASS_SOURCES) * (STORAGE_COMBINATIONS + INT8_NORM_COMBINATIONS) * 2
    assert len(chosen) == update + int8_update + norms
    return chosen


def test_update_kernels_neither_spill_nor_crowd_out_blocks(compiled, capsys):
    usage, ptx = compiled
    update = element_kernels(usage)
    with capsys.disabled():
        print(f"\nptxas, sm_{ARCH}: registers / stack / spill stores / spill loads / launch-bound blocks per kernel")
        for name in sorted(usage, key=readable):
            u = usage[name]
            print(f"  {u['registers']:4d}  {u['stack']:3d}  {u['spill_stores']:3d}  {u['spill_loads']:3d}  "
                  f"{min_blocks(ptx[name]):2d}  {readable(name)}")
    problems = [f"{readable(name)}: {u}" for name, u in usage.items()
                if u["spill_stores"] or u["spill_loads"] or u["stack"]]
    assert not problems, "kernels spilling or using local memory:\n" + "\n".join(problems)
    crowded = [f"{readable(name)}: {u['registers']} registers for {min_blocks(ptx[name])} blocks"
               for name, u in update.items()
               if min_blocks(ptx[name]) < minimum_blocks(readable(name))
               or u["registers"] > max_registers(min_blocks(ptx[name]))]
    assert not crowded, "update kernels that fit fewer than 3 blocks, or not their launch bounds:\n" + "\n".join(crowded)


def test_update_kernels_contract_no_multiply_add(compiled):
    _, ptx = compiled
    update = element_kernels(ptx)
    for name, body in update.items():
        assert "call" not in re.findall(r"^\s*(call)\b", body, re.MULTILINE), f"{readable(name)} calls a function"
        # Floating-point only: an integer mad (mad.lo.s32, an 8-bit kernel's index math) rounds nothing.
        fused = re.findall(r"^\s*((?:fma|mad)\.\S*?(?:b?f16|f32|f64)(?:x2)?)\s", body, re.MULTILINE)
        assert not fused, f"{readable(name)}: {sorted(set(fused))}"
        assert re.search(r"^\s*(?:mul|add)\.rn\.f(?:32|64)", body, re.MULTILINE), f"{readable(name)}: no float math?"
