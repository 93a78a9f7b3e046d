// Operator definitions for the fawkes_fast library, the input checks every backend runs (the
// only ones: fawkes_fast/ops.py does not repeat them), and the (empty) Python module stub.
// CPU kernels live in ssim_cpu.cpp / tanh_adam_cpu.cpp / ordered_mm_cpu.cpp, CUDA kernels in the sibling .cu files;
// each backend registers itself with TORCH_LIBRARY_IMPL(fawkes_fast, <Backend>, m).
#ifdef TORCH_EXTENSION_NAME
#include <Python.h>
#endif

#include <torch/library.h>

#include <cmath>

#include "fawkes_fast.h"

#ifdef TORCH_EXTENSION_NAME
extern "C" {
// `import fawkes_fast._C` loads this shared object, which runs the TORCH_LIBRARY static
// initialisers below. The module itself is empty: everything is reached via torch.ops.fawkes_fast.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif

namespace fawkes_fast {

void check_ssim_inputs(const at::Tensor& x, const at::Tensor& y, double data_range) {
  TORCH_CHECK_VALUE(x.dim() == 4, "fawkes_fast ssim: x must be (B, C, H, W), got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.sizes() == y.sizes(), "fawkes_fast ssim: x and y shapes differ: ", x.sizes(),
                    " vs ", y.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "fawkes_fast ssim: x must be float32 (or float64), got ", x.scalar_type());
  TORCH_CHECK_TYPE(x.scalar_type() == y.scalar_type(), "fawkes_fast ssim: x and y dtypes differ: ",
                   x.scalar_type(), " vs ", y.scalar_type());
  TORCH_CHECK_VALUE(x.device() == y.device(), "fawkes_fast ssim: x and y are on different devices: ",
                    x.device(), " vs ", y.device());
  TORCH_CHECK_VALUE(x.size(0) > 0, "fawkes_fast ssim: empty batch (B == 0)");
  TORCH_CHECK_VALUE(x.size(1) == 1 || x.size(1) == 3, "fawkes_fast ssim: C must be 1 or 3, got ",
                    x.size(1));
  TORCH_CHECK_VALUE(x.size(2) >= kWin && x.size(3) >= kWin,
                    "fawkes_fast ssim: H and W must be >= 11 (11x11 window), got ", x.size(2), "x",
                    x.size(3));
  TORCH_CHECK_VALUE(std::isfinite(data_range) && data_range > 0,
                    "fawkes_fast ssim: data_range must be finite and > 0, got ", data_range);
}

void check_ssim_backward_inputs(const at::Tensor& grad_ssim, const at::Tensor& x,
                                const at::Tensor& saved) {
  const int64_t B = x.size(0), C = x.size(1), Ho = x.size(2) - 2 * kHalf, Wo = x.size(3) - 2 * kHalf;
  TORCH_CHECK_VALUE(grad_ssim.dim() == 1 && grad_ssim.size(0) == B,
                    "fawkes_fast ssim_backward: grad_ssim must have shape (B,), got ", grad_ssim.sizes());
  TORCH_CHECK_VALUE(grad_ssim.device() == x.device() && saved.device() == x.device(),
                    "fawkes_fast ssim_backward: tensors on different devices");
  TORCH_CHECK_VALUE(saved.numel() == 0 || (saved.sizes() == at::IntArrayRef({B, C, 3, Ho, Wo}) &&
                                           saved.scalar_type() == x.scalar_type()),
                    "fawkes_fast ssim_backward: saved partials must come from ssim_forward(x, y, ...) "
                    "or be empty");
}

void check_adam_inputs(const at::Tensor& w, const at::Tensor& m, const at::Tensor& v,
                       const at::Tensor& x, const at::Tensor& grad_x, const at::Tensor& step,
                       const at::Tensor& lr, double lo, double hi, double beta1, double beta2,
                       double eps) {
  TORCH_CHECK_VALUE(w.dim() >= 1 && w.size(0) > 0,
                    "fawkes_fast tanh_adam_step: w must be (B, ...) with B > 0, got shape ", w.sizes());
  const int64_t B = w.size(0);
  const char* names[] = {"w", "m", "v", "x", "grad_x"};
  const at::Tensor* state[] = {&w, &m, &v, &x, &grad_x};
  for (int i = 0; i < 5; ++i) {
    const at::Tensor& t = *state[i];
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "fawkes_fast tanh_adam_step: ", names[i],
                     " must be float32, got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.sizes() == w.sizes(), "fawkes_fast tanh_adam_step: ", names[i], " shape ",
                      t.sizes(), " differs from w shape ", w.sizes());
    TORCH_CHECK_VALUE(t.device() == w.device(), "fawkes_fast tanh_adam_step: ", names[i], " is on ",
                      t.device(), ", w on ", w.device());
    TORCH_CHECK_VALUE(t.is_contiguous(), "fawkes_fast tanh_adam_step: ", names[i], " must be contiguous");
  }
  const char* pnames[] = {"step", "lr"};
  const at::Tensor* per_image[] = {&step, &lr};
  for (int i = 0; i < 2; ++i) {
    const at::Tensor& t = *per_image[i];
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == B, "fawkes_fast tanh_adam_step: ", pnames[i],
                      " must have shape (", B, ",), got ", t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "fawkes_fast tanh_adam_step: ", pnames[i],
                     " must be float32, got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.device() == w.device(), "fawkes_fast tanh_adam_step: ", pnames[i], " is on ",
                      t.device(), ", w on ", w.device());
  }
  TORCH_CHECK_VALUE(std::isfinite(lo) && std::isfinite(hi) && lo < hi,
                    "fawkes_fast tanh_adam_step: need finite lo < hi, got lo=", lo, ", hi=", hi);
  TORCH_CHECK_VALUE(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1,
                    "fawkes_fast tanh_adam_step: betas must be in [0, 1), got ", beta1, ", ", beta2);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0,
                    "fawkes_fast tanh_adam_step: eps must be finite and >= 0, got ", eps);
}

void check_ordered_mm_inputs(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK_VALUE(a.dim() == 2 && (b.dim() == 2 || b.dim() == 3),
                    "fawkes_fast ordered_mm: a must be (M, K) and b (K, N) or (B, K, N), got shapes ", a.sizes(),
                    " and ", b.sizes());
  TORCH_CHECK_VALUE(a.size(1) == b.size(-2), "fawkes_fast ordered_mm: a is ", a.sizes(), " but b is ", b.sizes(),
                    " (a's columns must be b's rows)");
  TORCH_CHECK_TYPE(a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat,
                   "fawkes_fast ordered_mm: a and b must be float32, got ", a.scalar_type(), " and ",
                   b.scalar_type());
  TORCH_CHECK_VALUE(a.device() == b.device(), "fawkes_fast ordered_mm: a and b are on different devices: ",
                    a.device(), " vs ", b.device());
}

TORCH_LIBRARY(fawkes_fast, m) {
  m.def("ssim_forward(Tensor x, Tensor y, float data_range, bool need_grad) -> (Tensor, Tensor)");
  m.def("ssim_backward(Tensor grad_ssim, Tensor x, Tensor y, Tensor saved, float data_range) -> Tensor");
  m.def(
      "tanh_adam_step(Tensor(a!) w, Tensor(b!) m, Tensor(c!) v, Tensor(d!) x, Tensor grad_x, "
      "Tensor step, Tensor lr, float lo, float hi, float beta1, float beta2, float eps) -> ()");
  m.def("ordered_mm(Tensor a, Tensor b) -> Tensor");
}

TORCH_LIBRARY_IMPL(fawkes_fast, CPU, m) {
  m.impl("ssim_forward", &ssim_forward_cpu);
  m.impl("ssim_backward", &ssim_backward_cpu);
  m.impl("tanh_adam_step", &tanh_adam_step_cpu);
  m.impl("ordered_mm", &ordered_mm_cpu);
}

}  // namespace fawkes_fast
