#include "cuda_host/controls.h"

#include <pybind11/stl.h>

#include <cstdint>

#include "cuda_host/builtins.h"
#include "cuda_host/devices.h"

namespace py = pybind11;

namespace fusedopt::cuda_host {

void define_host_controls(py::module_& m) {
  m.def("host_launch_log", [] {
    py::list out;
    for (const LaunchRecord& r : launch_log()) {
      py::dict entry;
      entry["device"] = r.device;
      entry["grid"] = py::make_tuple(r.grid.x, r.grid.y, r.grid.z);
      entry["block"] = py::make_tuple(r.block.x, r.block.y, r.block.z);
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
  // The shim's conversions (the GPU's cvt.rn) over whole arrays, for the tests to compare
  // with torch's: count float32 values at `source` to 16-bit patterns at `target`.
  m.def("host_float_to_half_bits", [](uintptr_t source, uintptr_t target, int64_t count) {
    const float* in = reinterpret_cast<const float*>(source);
    uint16_t* out = reinterpret_cast<uint16_t*>(target);
    for (int64_t i = 0; i < count; ++i) out[i] = __half_as_ushort(__float2half_rn(in[i]));
  });
  m.def("host_float_to_bfloat16_bits", [](uintptr_t source, uintptr_t target, int64_t count) {
    const float* in = reinterpret_cast<const float*>(source);
    uint16_t* out = reinterpret_cast<uint16_t*>(target);
    for (int64_t i = 0; i < count; ++i) out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(in[i]));
  });
  m.def("host_half_bits_to_float", [](uintptr_t source, uintptr_t target, int64_t count) {
    const uint16_t* in = reinterpret_cast<const uint16_t*>(source);
    float* out = reinterpret_cast<float*>(target);
    for (int64_t i = 0; i < count; ++i) out[i] = __half2float(__ushort_as_half(in[i]));
  });
}

}  // namespace fusedopt::cuda_host
