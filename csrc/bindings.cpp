// fusedopt._C: the only file that knows about Python. It turns integers from Python
// into a TensorTable and plain config structs, releases the GIL and calls a kernel.
// Every address was validated in Python (fusedopt/_buckets.py) before it got here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>

#include "cpu/kernels.h"
#if FUSEDOPT_WITH_CUDA
#include "cuda/cuda_ops.h"
#endif
// FUSEDOPT_CUDA_HOST=1: this file compiled once more, as fusedopt._cuda_host, over the CUDA
// kernels built as host C++ (csrc/cuda_host, CMakeLists.txt), for the tests.
#ifndef FUSEDOPT_CUDA_HOST
#define FUSEDOPT_CUDA_HOST 0
#endif
#if FUSEDOPT_CUDA_HOST
#include "cuda_host/controls.h"
#define FUSEDOPT_MODULE_NAME _cuda_host
#else
#define FUSEDOPT_MODULE_NAME _C
#endif

namespace py = pybind11;
using namespace fusedopt;

namespace {

TensorTable table_at(uintptr_t address, int64_t n) {
  if (n < 0) throw std::invalid_argument("fusedopt._C: negative tensor count");
  return TensorTable{reinterpret_cast<const int64_t*>(address), n};
}

DType dtype_from(int code) {
  if (code < 0 || code > int(DType::BFloat16)) throw std::invalid_argument("fusedopt._C: unknown dtype code");
  return DType(code);
}

// The pointers arrive as integers, 0 for "none" (see fusedopt/backends/native.py).
GradTransform grad_transform(uintptr_t grad_scale, uintptr_t found_inf, uintptr_t clip_coef) {
  return GradTransform{reinterpret_cast<const float*>(grad_scale), reinterpret_cast<const float*>(found_inf),
                       reinterpret_cast<const float*>(clip_coef)};
}

const double* lr_tensor_at(uintptr_t address) { return reinterpret_cast<const double*>(address); }

AdamConfig adam_config(double lr, double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
                       bool maximize, bool decoupled, bool optimized_update, bool master_weights, uintptr_t lr_tensor,
                       GradTransform transform) {
  return AdamConfig{lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled, optimized_update,
                    master_weights, lr_tensor_at(lr_tensor), transform};
}

SGDConfig sgd_config(double lr, double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
                     bool first_step, bool master_weights, uintptr_t lr_tensor, GradTransform transform) {
  return SGDConfig{lr, momentum, dampening, weight_decay, nesterov, maximize, first_step, master_weights,
                   lr_tensor_at(lr_tensor), transform};
}

RMSpropConfig rmsprop_config(double lr, double alpha, double eps, double weight_decay, double momentum, bool centered,
                             bool maximize, bool master_weights, uintptr_t lr_tensor, GradTransform transform) {
  return RMSpropConfig{lr, alpha, eps, weight_decay, momentum, centered, maximize, master_weights,
                       lr_tensor_at(lr_tensor), transform};
}

py::dict build_info() {
  py::dict info;
  info["version"] = FUSEDOPT_VERSION;
  info["cpu_isa"] = cpu::isa_name();
#if FUSEDOPT_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = FUSEDOPT_CUDA_ARCHS;
  info["cuda_compiler_version"] = FUSEDOPT_CUDA_VERSION;
  info["cuda_host"] = bool(FUSEDOPT_CUDA_HOST);
  info["cuda_default_chunk_bytes"] = cuda::default_chunk_bytes();
  info["cuda_workspace_bytes_per_tensor"] = cuda::kWorkspaceBytesPerTensor;
#else
  info["cuda"] = false;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(FUSEDOPT_MODULE_NAME, m) {
  m.doc() = "fusedopt native kernels (CPU, and CUDA when built with nvcc); no libtorch inside";
  m.def("build_info", &build_info);
  const auto no_gil = py::call_guard<py::gil_scoped_release>();
  // Every op takes (table address, tensor count, dtype code, hyper-parameters..., master_weights,
  // lr_tensor, grad_scale, found_inf, clip_coef addresses) and then threads (CPU) or workspace
  // address, workspace bytes, chunk bytes, device, stream (CUDA).

  m.def("cpu_adam", [](uintptr_t table, int64_t n, int dtype, double lr, double beta1, double beta2, double eps,
                       double weight_decay, bool amsgrad, bool maximize, bool decoupled, bool optimized_update,
                       bool master_weights, uintptr_t lr_tensor, uintptr_t grad_scale, uintptr_t found_inf,
                       uintptr_t clip_coef, int threads) {
          cpu::adam(table_at(table, n), dtype_from(dtype),
                    adam_config(lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled, optimized_update,
                                master_weights, lr_tensor, grad_transform(grad_scale, found_inf, clip_coef)),
                    threads);
        }, no_gil);
  m.def("cpu_sgd", [](uintptr_t table, int64_t n, int dtype, double lr, double momentum, double dampening,
                      double weight_decay, bool nesterov, bool maximize, bool first_step, bool master_weights,
                      uintptr_t lr_tensor, uintptr_t grad_scale, uintptr_t found_inf, uintptr_t clip_coef,
                      int threads) {
          cpu::sgd(table_at(table, n), dtype_from(dtype),
                   sgd_config(lr, momentum, dampening, weight_decay, nesterov, maximize, first_step, master_weights,
                              lr_tensor, grad_transform(grad_scale, found_inf, clip_coef)),
                   threads);
        }, no_gil);
  m.def("cpu_rmsprop", [](uintptr_t table, int64_t n, int dtype, double lr, double alpha, double eps,
                          double weight_decay, double momentum, bool centered, bool maximize, bool master_weights,
                          uintptr_t lr_tensor, uintptr_t grad_scale, uintptr_t found_inf, uintptr_t clip_coef,
                          int threads) {
          cpu::rmsprop(table_at(table, n), dtype_from(dtype),
                       rmsprop_config(lr, alpha, eps, weight_decay, momentum, centered, maximize, master_weights,
                                      lr_tensor, grad_transform(grad_scale, found_inf, clip_coef)),
                       threads);
        }, no_gil);
  m.def("cpu_sum_of_squares", [](uintptr_t table, int64_t n, int dtype, int threads) {
          return cpu::sum_of_squares(table_at(table, n), dtype_from(dtype), threads);
        }, no_gil);

#if FUSEDOPT_WITH_CUDA
  m.def("cuda_unusable_reason", &cuda::unusable_reason, py::arg("device"));
  m.def("cuda_adam", [](uintptr_t table, int64_t n, int dtype, double lr, double beta1, double beta2, double eps,
                        double weight_decay, bool amsgrad, bool maximize, bool decoupled, bool optimized_update,
                        bool master_weights, uintptr_t lr_tensor, uintptr_t grad_scale, uintptr_t found_inf,
                        uintptr_t clip_coef, uintptr_t workspace, int64_t workspace_bytes, int64_t chunk_bytes,
                        int device, uintptr_t stream) {
          cuda::adam(table_at(table, n), dtype_from(dtype),
                     adam_config(lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled, optimized_update,
                                 master_weights, lr_tensor, grad_transform(grad_scale, found_inf, clip_coef)),
                     cuda::LaunchResources{workspace, workspace_bytes, chunk_bytes}, device, stream);
        }, no_gil);
  m.def("cuda_sgd", [](uintptr_t table, int64_t n, int dtype, double lr, double momentum, double dampening,
                       double weight_decay, bool nesterov, bool maximize, bool first_step, bool master_weights,
                       uintptr_t lr_tensor, uintptr_t grad_scale, uintptr_t found_inf, uintptr_t clip_coef,
                       uintptr_t workspace, int64_t workspace_bytes, int64_t chunk_bytes, int device,
                       uintptr_t stream) {
          cuda::sgd(table_at(table, n), dtype_from(dtype),
                    sgd_config(lr, momentum, dampening, weight_decay, nesterov, maximize, first_step, master_weights,
                               lr_tensor, grad_transform(grad_scale, found_inf, clip_coef)),
                    cuda::LaunchResources{workspace, workspace_bytes, chunk_bytes}, device, stream);
        }, no_gil);
  m.def("cuda_rmsprop", [](uintptr_t table, int64_t n, int dtype, double lr, double alpha, double eps,
                           double weight_decay, double momentum, bool centered, bool maximize, bool master_weights,
                           uintptr_t lr_tensor, uintptr_t grad_scale, uintptr_t found_inf, uintptr_t clip_coef,
                           uintptr_t workspace, int64_t workspace_bytes, int64_t chunk_bytes, int device,
                           uintptr_t stream) {
          cuda::rmsprop(table_at(table, n), dtype_from(dtype),
                        rmsprop_config(lr, alpha, eps, weight_decay, momentum, centered, maximize, master_weights,
                                       lr_tensor, grad_transform(grad_scale, found_inf, clip_coef)),
                        cuda::LaunchResources{workspace, workspace_bytes, chunk_bytes}, device, stream);
        }, no_gil);
  m.def("cuda_launch_plan", [](const std::vector<int64_t>& numels, int64_t tensor_lists, int64_t element_bytes,
                               bool large_parameter_block, int64_t chunk_bytes) {
          auto plan =
              cuda::describe_launch_plan(numels, tensor_lists, element_bytes, large_parameter_block, chunk_bytes);
          py::dict out;
          out["launches"] = plan.launches;
          out["tensors_per_launch"] = plan.tensors_per_launch;
          out["chunks_per_launch"] = plan.chunks_per_launch;
          out["chunk_elements"] = plan.chunk_elements;
          out["parameter_block_limit"] = plan.parameter_block_limit;
          out["parameter_bytes_per_launch"] = plan.parameter_bytes_per_launch;
          out["tensor_index"] = plan.tensor_index;
          out["first_chunk"] = plan.first_chunk;
          return out;
        }, py::arg("numels"), py::arg("tensor_lists"), py::arg("element_bytes"),
        py::arg("large_parameter_block") = true, py::arg("chunk_bytes") = 0);
#endif
#if FUSEDOPT_CUDA_HOST
  cuda_host::define_host_controls(m);
#endif
}
