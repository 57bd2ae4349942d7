// The host build's cuda_fp16.h: the shim's declarations (csrc/cuda_host/shim.h), so csrc/cuda
// includes it unchanged while g++ compiles it; this folder precedes any CUDA toolkit's.
#pragma once
#include "cuda_host/shim.h"
