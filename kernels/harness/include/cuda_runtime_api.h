// CPU execution harness stub: everything CUDA's <cuda_runtime_api.h> provides to device code is already in
// the force-included kernels/harness/cuda_shim.h.
#pragma once
