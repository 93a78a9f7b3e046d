// fawkes_fast: fused SSIM (tf.image.ssim conventions) and tanh-space Adam ops.
//
// Operator schemas (namespace fawkes_fast, registered in fawkes_fast.cpp):
//   ssim_forward(Tensor x, Tensor y, float data_range, bool need_grad) -> (Tensor, Tensor)
//   ssim_backward(Tensor grad_ssim, Tensor x, Tensor y, Tensor partials, float data_range) -> Tensor
//   ssim_map(Tensor x, Tensor y, float data_range) -> Tensor
//   tanh_adam_step(Tensor(a!) w, Tensor(b!) m, Tensor(c!) v, Tensor(d!) x, Tensor grad_x,
//                  Tensor step, Tensor lr, float lo, float hi, float beta1, float beta2,
//                  float eps, Tensor? grad2=None, Tensor? scale2=None) -> ()
#pragma once

#include <ATen/core/Tensor.h>
#include <optional>
#include <tuple>

#include <cmath>

namespace fawkes_fast {

// ---- SSIM constants (tf.image.ssim / skimage gaussian_weights=True) --------------------------
constexpr int kWin = 11;       // window size
constexpr int kHalf = 5;       // (kWin - 1) / 2; the VALID map is (H-10) x (W-10)
constexpr double kSigma = 1.5;
constexpr double kK1 = 0.01;
constexpr double kK2 = 0.03;

// Normalised 1-D Gaussian taps g[0..10] (the 2-D window is g g^T).
template <typename T>
inline void gaussian_taps(T* g) {
  double w[kWin];
  double s = 0.0;
  for (int k = 0; k < kWin; ++k) {
    const double d = double(k - kHalf);
    w[k] = std::exp(-d * d / (2.0 * kSigma * kSigma));
    s += w[k];
  }
  for (int k = 0; k < kWin; ++k) g[k] = T(w[k] / s);
}

// Shared input checks used by every backend (raise c10::Error -> RuntimeError in Python).
void check_ssim_inputs(const at::Tensor& x, const at::Tensor& y, double data_range);
void check_adam_inputs(const at::Tensor& w, const at::Tensor& m, const at::Tensor& v,
                       const at::Tensor& x, const at::Tensor& grad_x, const at::Tensor& step,
                       const at::Tensor& lr, double lo, double hi,
                       const std::optional<at::Tensor>& grad2,
                       const std::optional<at::Tensor>& scale2);

// ---- CPU kernels (ssim_cpu.cpp, tanh_adam_cpu.cpp) ----------------------------------------------
// partials layout: (B, C, 3, H-10, W-10) = dS/dmu_x, dS/dE[x'^2], dS/dE[x'y'] per output pixel
// (x' = x - data_range/2: moments are centred for fp32 accuracy), or an empty tensor.
std::tuple<at::Tensor, at::Tensor> ssim_forward_cpu(const at::Tensor& x, const at::Tensor& y,
                                                    double data_range, bool need_grad);
at::Tensor ssim_backward_cpu(const at::Tensor& grad_ssim, const at::Tensor& x,
                             const at::Tensor& y, const at::Tensor& partials, double data_range);
at::Tensor ssim_map_cpu(const at::Tensor& x, const at::Tensor& y, double data_range);
void tanh_adam_step_cpu(at::Tensor& w, at::Tensor& m, at::Tensor& v, at::Tensor& x,
                        const at::Tensor& grad_x, const at::Tensor& step, const at::Tensor& lr,
                        double lo, double hi, double beta1, double beta2, double eps,
                        const std::optional<at::Tensor>& grad2,
                        const std::optional<at::Tensor>& scale2);

}  // namespace fawkes_fast
