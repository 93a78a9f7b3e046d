// CUDA sibling of ordered_mm_cpu.cpp. On the GPU no thread count changes a sum's order (cuBLAS
// picks its algorithm from the shape and the device), so this is cuBLAS's product.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fawkes_fast.h"

namespace fawkes_fast {

at::Tensor ordered_mm_cuda(const at::Tensor& a, const at::Tensor& b) {
  check_ordered_mm_inputs(a, b);
  const c10::cuda::CUDAGuard guard(a.device());
  return at::mm(a, b);
}

TORCH_LIBRARY_IMPL(fawkes_fast, CUDA, m) { m.impl("ordered_mm", &ordered_mm_cuda); }

}  // namespace fawkes_fast
