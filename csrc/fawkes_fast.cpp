// Operator definitions for the fawkes_fast library and the (empty) Python module stub.
// CPU kernels live in ssim_cpu.cpp / tanh_adam_cpu.cpp, CUDA kernels in the sibling .cu files;
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
  TORCH_CHECK(x.dim() == 4, "fawkes_fast::ssim: x must be (B, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.sizes() == y.sizes(), "fawkes_fast::ssim: x and y shapes differ: ", x.sizes(),
              " vs ", y.sizes());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "fawkes_fast::ssim: x and y dtypes differ");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "fawkes_fast::ssim: expected float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.device() == y.device(), "fawkes_fast::ssim: x and y are on different devices");
  TORCH_CHECK(x.size(0) > 0, "fawkes_fast::ssim: empty batch");
  TORCH_CHECK(x.size(1) == 1 || x.size(1) == 3, "fawkes_fast::ssim: C must be 1 or 3, got ",
              x.size(1));
  TORCH_CHECK(x.size(2) >= kWin && x.size(3) >= kWin,
              "fawkes_fast::ssim: H and W must be >= 11, got ", x.size(2), "x", x.size(3));
  TORCH_CHECK(std::isfinite(data_range) && data_range > 0,
              "fawkes_fast::ssim: data_range must be finite and > 0");
}

void check_adam_inputs(const at::Tensor& w, const at::Tensor& m, const at::Tensor& v,
                       const at::Tensor& x, const at::Tensor& grad_x, const at::Tensor& step,
                       const at::Tensor& lr, double lo, double hi,
                       const std::optional<at::Tensor>& grad2,
                       const std::optional<at::Tensor>& scale2) {
  TORCH_CHECK(w.dim() >= 1 && w.size(0) > 0, "fawkes_fast::tanh_adam_step: w must be (B, ...)");
  const int64_t B = w.size(0);
  for (const at::Tensor* t : {&w, &m, &v, &x, &grad_x}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat, "fawkes_fast::tanh_adam_step: tensors must be float32");
    TORCH_CHECK(t->sizes() == w.sizes(), "fawkes_fast::tanh_adam_step: w, m, v, x, grad_x shapes differ");
    TORCH_CHECK(t->is_contiguous(), "fawkes_fast::tanh_adam_step: w, m, v, x, grad_x must be contiguous");
    TORCH_CHECK(t->device() == w.device(), "fawkes_fast::tanh_adam_step: tensors on different devices");
  }
  for (const at::Tensor* t : {&step, &lr}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat, "fawkes_fast::tanh_adam_step: step/lr must be float32");
    TORCH_CHECK(t->dim() == 1 && t->size(0) == B, "fawkes_fast::tanh_adam_step: step/lr must have shape (B,)");
    TORCH_CHECK(t->device() == w.device(), "fawkes_fast::tanh_adam_step: tensors on different devices");
  }
  TORCH_CHECK(grad2.has_value() == scale2.has_value(),
              "fawkes_fast::tanh_adam_step: grad2 and scale2 must be given together");
  if (grad2.has_value()) {
    TORCH_CHECK(grad2->scalar_type() == at::kFloat && grad2->sizes() == w.sizes() &&
                    grad2->is_contiguous() && grad2->device() == w.device(),
                "fawkes_fast::tanh_adam_step: grad2 must be a contiguous float32 tensor like w");
    TORCH_CHECK(scale2->scalar_type() == at::kFloat && scale2->dim() == 1 &&
                    scale2->size(0) == B && scale2->device() == w.device(),
                "fawkes_fast::tanh_adam_step: scale2 must be float32 of shape (B,)");
  }
  TORCH_CHECK(std::isfinite(lo) && std::isfinite(hi) && lo < hi,
              "fawkes_fast::tanh_adam_step: need finite lo < hi");
}

TORCH_LIBRARY(fawkes_fast, m) {
  m.def("ssim_forward(Tensor x, Tensor y, float data_range, bool need_grad) -> (Tensor, Tensor)");
  m.def("ssim_backward(Tensor grad_ssim, Tensor x, Tensor y, Tensor partials, float data_range) -> Tensor");
  m.def("ssim_map(Tensor x, Tensor y, float data_range) -> Tensor");
  m.def(
      "tanh_adam_step(Tensor(a!) w, Tensor(b!) m, Tensor(c!) v, Tensor(d!) x, Tensor grad_x, "
      "Tensor step, Tensor lr, float lo, float hi, float beta1, float beta2, float eps, "
      "Tensor? grad2=None, Tensor? scale2=None) -> ()");
}

TORCH_LIBRARY_IMPL(fawkes_fast, CPU, m) {
  m.impl("ssim_forward", &ssim_forward_cpu);
  m.impl("ssim_backward", &ssim_backward_cpu);
  m.impl("ssim_map", &ssim_map_cpu);
  m.impl("tanh_adam_step", &tanh_adam_step_cpu);
}

}  // namespace fawkes_fast
