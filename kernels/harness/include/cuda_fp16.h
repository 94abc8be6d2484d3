// CPU execution harness stub: everything CUDA's <cuda_fp16.h> provides to device code is already in
// the force-included kernels/harness/cuda_shim.h.
#pragma once
