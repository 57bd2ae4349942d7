// Force-included (-include) before every csrc/cuda source of the host build: what nvcc
// makes available to a .cu file without an #include (cuda_runtime.h, the built-ins), and
// the launch syntax that rewrite_launches.py turns `<<<...>>>` into.
#pragma once

#include "cuda_host/builtins.h"
#include "cuda_host/launch.h"
#include "cuda_host/runtime_api.h"
