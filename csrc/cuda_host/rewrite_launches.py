"""Copies CUDA sources for the host build, with each kernel launch written as C++.

`kernel<<<grid, block, shared, stream>>>(args)` is not C++; it becomes
`kernel * ::fusedopt::cuda_host::LaunchConfig(grid, block, shared, stream)(args)`, which
csrc/cuda_host/launch.h runs on the CPU. Nothing else changes: newlines are kept and a
#line directive names the original file, so compiler messages point into csrc/cuda.
Headers are copied too (a launch may sit in a template in a header); a .cu file becomes
NAME.cu.cpp, so CMake compiles it as C++.

Usage: rewrite_launches.py OUTPUT_FOLDER SOURCE...
"""
import re
import sys
from pathlib import Path

LAUNCH = re.compile(r"<<<(.*?)>>>", re.S)


def rewrite(text: str) -> str:
    rewritten = LAUNCH.sub(lambda m: " * ::fusedopt::cuda_host::LaunchConfig(" + m.group(1) + ")", text)
    if "<<<" in rewritten or ">>>" in rewritten:
        raise ValueError("a '<<<' without its '>>>' (or the reverse) is left after the rewrite")
    return rewritten


def output_name(source: Path) -> str:
    return source.name + ".cpp" if source.suffix == ".cu" else source.name


def main(folder: str, sources) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name in sources:
        source = Path(name).resolve()
        try:
            text = rewrite(source.read_text())
        except ValueError as error:
            sys.exit(f"{source}: {error}")
        quoted = source.as_posix().replace("\\", "\\\\").replace('"', '\\"')
        target, content = out / output_name(source), f'#line 1 "{quoted}"\n' + text
        # Unchanged outputs keep their time stamp, so Ninja (restat) recompiles only the units
        # whose source changed, not every host unit after any edit under csrc/cuda.
        if not target.exists() or target.read_text() != content:
            target.write_text(content)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
