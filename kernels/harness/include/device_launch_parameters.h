// CPU execution harness stub: everything CUDA's <device_launch_parameters.h> provides to device code is already in
// the force-included kernels/harness/cuda_shim.h.
#pragma once
