// The host build's test controls, added to the module that bindings.cpp defines when it is
// compiled as fusedopt._cuda_host (CMakeLists.txt): the launch log, the execution order
// and block window of the executor, its self-tests and the shim's conversions
// (devices.h). Header-only, so the module costs no second pybind11 translation unit.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "cuda_host/devices.h"
#include "cuda_host/runtime_api.h"

namespace fusedopt::cuda_host {

inline void define_host_controls(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("host_launch_log", [] {
    py::list out;
    for (const LaunchRecord& r : launch_log()) {
      py::dict entry;
      entry["device"] = r.device;
      entry["grid"] = py::make_tuple(r.grid[0], r.grid[1], r.grid[2]);
      entry["block"] = py::make_tuple(r.block[0], r.block[1], r.block[2]);
      entry["parameter_bytes"] = r.parameter_bytes;
      entry["parameters"] = r.parameters;
      entry["blocks_run"] = r.blocks_run;
      entry["error"] = cudaGetErrorName(r.error);
      out.append(entry);
    }
    return out;
  }, "Every kernel launch since the last host_clear_launch_log(), oldest first.");
  m.def("host_clear_launch_log", &clear_launch_log);
  m.def("host_set_reverse_order", &set_reverse_order, py::arg("reverse"),
        "Run blocks and threads in reverse index order (True) or in order (False, the default).");
  m.def("host_set_block_window", &set_block_window, py::arg("first") = 0, py::arg("last") = UINT64_MAX,
        "Run only the blocks whose linear index is in [first, last); no arguments: all blocks.");
  m.def("host_selftest", &run_selftest, py::arg("name"), py::arg("blocks") = 1, py::arg("device") = 0,
        "Runs one of the executor's own test kernels; returns what its threads wrote.");
  // count values at address `source` converted into address `target`
  m.def("host_float_to_half_bits", [](uintptr_t source, uintptr_t target, int64_t count) {
    float_to_half_bits(reinterpret_cast<const float*>(source), reinterpret_cast<uint16_t*>(target), count);
  });
  m.def("host_float_to_bfloat16_bits", [](uintptr_t source, uintptr_t target, int64_t count) {
    float_to_bfloat16_bits(reinterpret_cast<const float*>(source), reinterpret_cast<uint16_t*>(target), count);
  });
  m.def("host_half_bits_to_float", [](uintptr_t source, uintptr_t target, int64_t count) {
    half_bits_to_float(reinterpret_cast<const uint16_t*>(source), reinterpret_cast<float*>(target), count);
  });
}

}  // namespace fusedopt::cuda_host
