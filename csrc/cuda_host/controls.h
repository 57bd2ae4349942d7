// The host build's test controls, added to the module that bindings.cpp defines when it is
// compiled as fusedopt._cuda_host (CMakeLists.txt): the launch log, the execution order
// and the block window of the executor (devices.h).
#pragma once

#include <pybind11/pybind11.h>

namespace fusedopt::cuda_host {

void define_host_controls(pybind11::module_& m);

}  // namespace fusedopt::cuda_host
