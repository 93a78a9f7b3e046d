// fawkes_fast: fused SSIM (tf.image.ssim conventions) and tanh-space Adam ops.
//
// Operator schemas (namespace fawkes_fast, registered in fawkes_fast.cpp):
//   ssim_forward(Tensor x, Tensor y, float data_range, bool need_grad) -> (Tensor ssim, Tensor saved)
//   ssim_backward(Tensor grad_ssim, Tensor x, Tensor y, Tensor saved, float data_range) -> Tensor
//   tanh_adam_step(Tensor(a!) w, Tensor(b!) m, Tensor(c!) v, Tensor(d!) x, Tensor grad_x,
//                  Tensor step, Tensor lr, float lo, float hi, float beta1, float beta2,
//                  float eps) -> ()
//   ordered_mm(Tensor a, Tensor b) -> Tensor    a @ b, b (K, N) or (B, K, N), each output summed
//                                               over k in order (CPU)
// `saved` is what the backend keeps for its backward: on CPU, with need_grad, the 3 partial
// maps (B, C, 3, H-10, W-10); otherwise (and always on CUDA, which recomputes them) empty.
// ssim_backward accepts an empty `saved` on every backend.
#pragma once

#include <ATen/core/Tensor.h>
#include <tuple>

#include "ssim_math.h"

namespace fawkes_fast {

// The one layer of input checks (raise c10 errors: TypeError / ValueError / RuntimeError in Python).
void check_ssim_inputs(const at::Tensor& x, const at::Tensor& y, double data_range);
void check_ssim_backward_inputs(const at::Tensor& grad_ssim, const at::Tensor& x,
                                const at::Tensor& saved);
void check_adam_inputs(const at::Tensor& w, const at::Tensor& m, const at::Tensor& v,
                       const at::Tensor& x, const at::Tensor& grad_x, const at::Tensor& step,
                       const at::Tensor& lr, double lo, double hi, double beta1, double beta2,
                       double eps);
void check_ordered_mm_inputs(const at::Tensor& a, const at::Tensor& b);

// ---- CPU kernels (ssim_cpu.cpp, tanh_adam_cpu.cpp, ordered_mm_cpu.cpp) -----------------------------
std::tuple<at::Tensor, at::Tensor> ssim_forward_cpu(const at::Tensor& x, const at::Tensor& y,
                                                    double data_range, bool need_grad);
at::Tensor ssim_backward_cpu(const at::Tensor& grad_ssim, const at::Tensor& x,
                             const at::Tensor& y, const at::Tensor& saved, double data_range);
void tanh_adam_step_cpu(at::Tensor& w, at::Tensor& m, at::Tensor& v, at::Tensor& x,
                        const at::Tensor& grad_x, const at::Tensor& step, const at::Tensor& lr,
                        double lo, double hi, double beta1, double beta2, double eps);
at::Tensor ordered_mm_cpu(const at::Tensor& a, const at::Tensor& b);

}  // namespace fawkes_fast
