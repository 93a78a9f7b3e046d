// Numerical checks of the fawkes_fast ops (CPU), run by ctest. No test framework: exits non-zero
// on the first failure. Calls go through the dispatcher (checking the registrations) and directly.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <tuple>
#include <vector>

#include "fawkes_fast.h"
#include "ssim_tile.h"

using namespace fawkes_fast;

static int g_failures = 0;
#define EXPECT(cond, ...)                                              \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                               \
      std::fprintf(stderr, "\n");                                      \
      ++g_failures;                                                    \
    }                                                                  \
  } while (0)

static std::tuple<at::Tensor, at::Tensor> ssim_forward_op(const at::Tensor& x, const at::Tensor& y,
                                                          double dr, bool need_grad) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fawkes_fast::ssim_forward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double, bool)>();
  return op.call(x, y, dr, need_grad);
}

// Direct (non-separable, no centring) double-precision SSIM of one image, tf.image.ssim conventions.
static double naive_ssim(const at::Tensor& x, const at::Tensor& y, double L) {
  const auto xa = x.to(at::kDouble).contiguous(), ya = y.to(at::kDouble).contiguous();
  const int64_t C = x.size(0), H = x.size(1), W = x.size(2);
  double g[kWin];
  gaussian_taps(g);
  const double C1 = (kK1 * L) * (kK1 * L), C2 = (kK2 * L) * (kK2 * L);
  const double* xp = xa.data_ptr<double>();
  const double* yp = ya.data_ptr<double>();
  double total = 0.0;
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i + kWin <= H; ++i)
      for (int64_t j = 0; j + kWin <= W; ++j) {
        double mx = 0, my = 0, xx = 0, yy = 0, xy = 0;
        for (int a = 0; a < kWin; ++a)
          for (int b = 0; b < kWin; ++b) {
            const double wgt = g[a] * g[b];
            const double xv = xp[(c * H + i + a) * W + j + b], yv = yp[(c * H + i + a) * W + j + b];
            mx += wgt * xv; my += wgt * yv; xx += wgt * xv * xv; yy += wgt * yv * yv; xy += wgt * xv * yv;
          }
        const double sx = xx - mx * mx, sy = yy - my * my, sxy = xy - mx * my;
        total += (2 * mx * my + C1) * (2 * sxy + C2) / ((mx * mx + my * my + C1) * (sx + sy + C2));
      }
  return total / double(C * (H - 10) * (W - 10));
}

static void test_identical() {
  for (auto dt : {at::kFloat, at::kDouble}) {
    const auto x = at::rand({2, 3, 37, 29}, at::TensorOptions().dtype(dt)) * 255;
    auto [s, p] = ssim_forward_op(x, x, 255.0, false);
    for (int b = 0; b < 2; ++b) EXPECT(std::abs(s[b].item<double>() - 1.0) < 1e-6, "ssim(x,x)=%g", s[b].item<double>());
    EXPECT(p.numel() == 0, "partials should be empty without need_grad");
  }
}

static void test_vs_naive() {
  at::manual_seed(1);
  const auto x = at::rand({2, 3, 31, 40}) * 255;
  const auto y = (x + at::randn({2, 3, 31, 40}) * 25).clamp(0, 255);
  auto [s, p] = ssim_forward_op(x, y, 255.0, true);
  EXPECT(p.sizes() == at::IntArrayRef({2, 3, 3, 21, 30}), "partials shape");
  for (int b = 0; b < 2; ++b) {
    const double ref = naive_ssim(x[b], y[b], 255.0);
    EXPECT(std::abs(s[b].item<double>() - ref) < 2e-6, "b=%d ssim %.8f vs naive %.8f", b, s[b].item<double>(), ref);
  }
}

static void test_grad_fd() {
  at::manual_seed(2);
  const auto opt = at::TensorOptions().dtype(at::kDouble);
  const auto x = at::rand({1, 1, 16, 14}, opt) * 255;
  const auto y = (x + at::randn({1, 1, 16, 14}, opt) * 30).clamp(0, 255);
  auto [s, p] = ssim_forward_cpu(x, y, 255.0, true);
  const auto dx = ssim_backward_cpu(at::ones({1}, opt), x, y, p, 255.0);
  const double h = 1e-4;
  double maxerr = 0, scale = dx.abs().max().item<double>();
  for (int i = 0; i < 16; i += 3)
    for (int j = 0; j < 14; j += 2) {
      auto xp = x.clone(), xm = x.clone();
      xp[0][0][i][j] += h;
      xm[0][0][i][j] -= h;
      const double fd = (std::get<0>(ssim_forward_cpu(xp, y, 255.0, false)).item<double>() -
                         std::get<0>(ssim_forward_cpu(xm, y, 255.0, false)).item<double>()) / (2 * h);
      maxerr = std::max(maxerr, std::abs(fd - dx[0][0][i][j].item<double>()));
    }
  EXPECT(maxerr < 1e-6 * scale + 1e-12, "finite-difference grad error %g (scale %g)", maxerr, scale);
}

// ---- the CUDA kernels' tiling, emulated on the host (no GPU needed) ------------------------------
// The phases of ssim_tile.h run one after the other with tid = 0, nt = 1, i.e. one block at a time,
// in the same shared-memory layout (aliasing included) as ssim_cuda.cu.
template <typename T>
static std::tuple<at::Tensor, at::Tensor> emulate_cuda_ssim(const at::Tensor& x, const at::Tensor& y,
                                                            const at::Tensor& grad, double dr) {
  const int64_t B = x.size(0), C = x.size(1);
  const int H = int(x.size(2)), W = int(x.size(3)), Ho = H - 2 * kHalf, Wo = W - 2 * kHalf;
  T g[kWin];
  gaussian_taps(g);
  const SsimConsts<T> k = ssim_consts<T>(dr);
  const auto xc = x.contiguous(), yc = y.contiguous();
  auto ssim = at::zeros({B}, at::TensorOptions().dtype(at::kDouble));
  auto dx = at::full({B, C, H, W}, std::nan(""), x.options());
  using F = tile::FwdLayout<T>;
  using Bw = tile::BwdLayout<T>;
  std::vector<T> fbuf(F::kElems), bbuf(Bw::kElems);
  for (int64_t p = 0; p < B * C; ++p) {
    const T* xp = xc.const_data_ptr<T>() + p * H * W;
    const T* yp = yc.const_data_ptr<T>() + p * H * W;
    double total = 0;
    for (int oy0 = 0; oy0 < Ho; oy0 += F::H)
      for (int ox0 = 0; ox0 < Wo; ox0 += F::W) {
        T* sx = fbuf.data();
        tile::load_centred(xp, yp, H, W, oy0, ox0, F::IH, F::IW, k.c, sx, sx + F::kIn, 0, 1);
        tile::horizontal_moments(sx, sx + F::kIn, F::IW, F::IH, F::W, g, sx + 2 * F::kIn, 0, 1);
        total += tile::forward_sum(sx + 2 * F::kIn, Ho, Wo, oy0, ox0, g, k, 0, 1);
      }
    ssim[p / C] += total / double(C * Ho * Wo);
    const T scale = T(grad[p / C].template item<double>() / double(C * Ho * Wo));
    for (int iy0 = 0; iy0 < H; iy0 += Bw::H)
      for (int ix0 = 0; ix0 < W; ix0 += Bw::W) {
        T* sx = bbuf.data();
        T* mom = sx + 2 * Bw::kIn;
        tile::load_centred(xp, yp, H, W, iy0 - 2 * kHalf, ix0 - 2 * kHalf, Bw::IH, Bw::IW, k.c, sx,
                           sx + Bw::kIn, 0, 1);
        tile::horizontal_moments(sx, sx + Bw::kIn, Bw::IW, Bw::IH, Bw::PW, g, mom, 0, 1);
        tile::backward_partials(mom, Ho, Wo, iy0, ix0, g, k, sx, 0, 1);
        tile::backward_vertical(sx, g, mom, 0, 1);
        tile::backward_dx(mom, xp, yp, H, W, iy0, ix0, g, k.c, scale, dx.template mutable_data_ptr<T>() + p * H * W, 0, 1);
      }
  }
  return {ssim, dx};
}

static void test_cuda_tiling_emulated() {
  at::manual_seed(4);
  // sizes that leave partial tiles on every side, and one smaller than a tile
  for (auto shape : {std::vector<int64_t>{2, 3, 45, 70}, std::vector<int64_t>{1, 1, 11, 13}}) {
    for (auto dt : {at::kFloat, at::kDouble}) {
      const auto opt = at::TensorOptions().dtype(dt);
      const auto x = at::rand(shape, opt) * 255;
      const auto y = (x + at::randn(shape, opt) * 20).clamp(0, 255);
      const auto grad = at::rand({shape[0]}, opt) + 0.5;
      auto [s_ref, part] = ssim_forward_cpu(x, y, 255.0, true);
      const auto dx_ref = ssim_backward_cpu(grad, x, y, part, 255.0);
      auto [s, dx] = dt == at::kFloat ? emulate_cuda_ssim<float>(x, y, grad, 255.0)
                                      : emulate_cuda_ssim<double>(x, y, grad, 255.0);
      const double tol = dt == at::kFloat ? 1e-4 : 1e-10;
      const double es = (s - s_ref.to(at::kDouble)).abs().max().item<double>();
      const double ed = ((dx - dx_ref).abs().max() / dx_ref.abs().max()).item<double>();
      EXPECT(es < tol * 0.1, "emulated CUDA forward: max |ssim - cpu| %g", es);
      EXPECT(ed < tol, "emulated CUDA backward: max rel |dx - cpu| %g", ed);
    }
  }
}

static void test_adam() {
  at::manual_seed(3);
  const int64_t B = 3, N = 1001;  // odd size exercises the SIMD tail
  auto w = at::randn({B, N}) * 0.5, m = at::zeros({B, N}), v = at::zeros({B, N}), x = at::zeros({B, N});
  auto w0 = w.clone(), m0 = m.clone(), v0 = v.clone(), x0 = x.clone();
  const auto gx = at::randn({B, N});
  const auto step = at::tensor({1.0f, 5.0f, 2.0f});
  const auto lr = at::tensor({0.1f, 0.0f, 0.02f});  // image 1 frozen
  const double lo = -1, hi = 3, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  tanh_adam_step_cpu(w, m, v, x, gx, step, lr, lo, hi, b1, b2, eps);
  double maxerr = 0;
  for (int64_t b = 0; b < B; ++b) {
    const double t = step[b].item<double>(), lrb = lr[b].item<double>();
    for (int64_t i = 0; i < N; ++i) {
      double ww = w0[b][i].item<double>(), mm = m0[b][i].item<double>(), vv = v0[b][i].item<double>();
      double xx = x0[b][i].item<double>();
      if (lrb != 0) {
        const double th = std::tanh(ww);
        const double g = gx[b][i].item<double>() * (hi - lo) / 2 * (1 - th * th);
        mm = b1 * mm + (1 - b1) * g;
        vv = b2 * vv + (1 - b2) * g * g;
        const double denom = std::sqrt(vv) / std::sqrt(1 - std::pow(b2, t)) + eps;
        ww -= lrb / (1 - std::pow(b1, t)) * mm / denom;
        xx = lo + (hi - lo) * (std::tanh(ww) + 1) / 2;
      }
      const double e[4] = {std::abs(ww - w[b][i].item<double>()) / (1 + std::abs(ww)),
                           std::abs(mm - m[b][i].item<double>()) / (1e-3 + std::abs(mm)),
                           std::abs(vv - v[b][i].item<double>()) / (1e-6 + std::abs(vv)),
                           std::abs(xx - x[b][i].item<double>()) / (1 + std::abs(xx))};
      for (double ei : e) maxerr = std::max(maxerr, ei);
    }
  }
  EXPECT(maxerr < 1e-5, "adam max rel err %g", maxerr);
  EXPECT(at::equal(w[1], w0[1]) && at::equal(x[1], x0[1]) && at::equal(m[1], m0[1]), "frozen image changed");
}

int main() {
  test_identical();
  test_vs_naive();
  test_grad_fd();
  test_cuda_tiling_emulated();
  test_adam();
  if (g_failures) {
    std::fprintf(stderr, "%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("fawkes_fast ctest: all checks passed\n");
  return 0;
}
