"""Builds fusedopt._C with CMake (Ninja). CMakeLists.txt holds the real build logic.

Environment knobs (read here and passed on to CMake):
  FUSEDOPT_NO_CUDA=1        build the CPU kernels only, even where nvcc exists
  FUSEDOPT_CUDA_ARCHS=...   CMake CUDA_ARCHITECTURES list (e.g. "90-real;90-virtual"), or "release":
                            sm_80, sm_90, sm_100 and sm_120 machine code (those this nvcc supports)
                            plus PTX for the newest of them (scripts/build_wheel.sh sets it for
                            release wheels). Default "80-real;90-real;90-virtual", which compiles
                            in a quarter of the time: a local `pip install .` serves the machine
                            it runs on
  FUSEDOPT_BUILD_TYPE=...   CMake build type, default Release (RelWithDebInfo with FUSEDOPT_SANITIZE)
  FUSEDOPT_CUDA_HOST=0|1    build fusedopt._cuda_host, the CUDA kernels compiled as host C++ for
                            the tests (no nvcc needed); default: for editable (`pip install -e`)
                            and in-place builds only, so wheels and `pip install .` leave it out
  FUSEDOPT_SANITIZE=1       build the CPU kernels with AddressSanitizer and UndefinedBehaviorSanitizer
                            (-O1; for tests only: import it with the runtimes preloaded, see .ci/sanitize)
  MAX_JOBS=N                parallel compile jobs
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
HOST_MODULE = "fusedopt._cuda_host"
# The GPUs of the machines the CUDA kernels are developed and tested on (A100, H100/H200).
DEV_CUDA_ARCHS = "80-real;90-real;90-virtual"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


def wants_cuda_host(in_place: bool) -> bool:
    requested = os.environ.get("FUSEDOPT_CUDA_HOST", "")
    return in_place if requested == "" else requested != "0"


def cuda_archs() -> str:
    """The FUSEDOPT_CUDA_ARCHS handed to CMake (see the module docstring)."""
    return os.environ.get("FUSEDOPT_CUDA_ARCHS") or DEV_CUDA_ARCHS


class CMakeBuild(build_ext):
    def finalize_options(self) -> None:
        super().finalize_options()  # sets inplace for editable installs too
        self.cuda_host = wants_cuda_host(bool(self.inplace))
        if not self.cuda_host:
            self.extensions = [ext for ext in self.extensions if ext.name != HOST_MODULE]

    def build_extension(self, ext: Extension) -> None:
        """One CMake build tree for every module; each extension builds its own target."""
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        sanitize = _flag("FUSEDOPT_SANITIZE")
        # A build folder of its own: switching to and from a sanitized build rebuilds nothing.
        build_dir = Path(self.build_temp).resolve() / ("cmake" + ("-sanitize" if sanitize else ""))
        build_dir.mkdir(parents=True, exist_ok=True)
        # RelWithDebInfo under sanitizers: pybind11 strips Release modules, and a report needs
        # the symbols to name the kernel's source line.
        build_type = os.environ.get("FUSEDOPT_BUILD_TYPE") or ("RelWithDebInfo" if sanitize else "Release")
        cmake_args = [
            f"-S{ROOT}",
            f"-B{build_dir}",
            "-GNinja",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DFUSEDOPT_VERSION={self.distribution.get_version()}",
            f"-DFUSEDOPT_CUDA_HOST={'ON' if self.cuda_host else 'OFF'}",
        ]
        # The cache of an earlier build remembers the ninja of the environment it was configured
        # in, which pip deletes after an isolated build: name the current one every time.
        if shutil.which("ninja"):
            cmake_args.append(f"-DCMAKE_MAKE_PROGRAM={shutil.which('ninja')}")
        # Always said, ON or OFF: the cache of an earlier FUSEDOPT_NO_CUDA=1 build would keep it on.
        cmake_args.append(f"-DFUSEDOPT_NO_CUDA={'ON' if _flag('FUSEDOPT_NO_CUDA') else 'OFF'}")
        cmake_args.append(f"-DFUSEDOPT_SANITIZE={'ON' if sanitize else 'OFF'}")
        # Always said: one build folder serves in-place and wheel builds, and the cache would
        # keep whichever list came first.
        cmake_args.append(f"-DFUSEDOPT_CUDA_ARCHS={cuda_archs()}")
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.run(["cmake", *cmake_args], check=True)
        target = ext.name.rsplit(".", 1)[-1]
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs, "--target", target], check=True)


setup(ext_modules=[CMakeExtension("fusedopt._C"), CMakeExtension(HOST_MODULE)], cmdclass={"build_ext": CMakeBuild})
