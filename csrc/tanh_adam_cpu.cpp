// CPU fused tanh-space Adam step (the math: adam_math.h). One pass over memory per element,
// 8-wide SIMD; images with lr[b] == 0 are left untouched (w, m, v, x).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "adam_math.h"
#include "fawkes_fast.h"
#include "simd.h"

namespace fawkes_fast {
namespace {

using V = simd::vec<float>;
using VI = simd::VecOf<float>::itype;
constexpr int L = simd::kLanes<float>;

// Vectorised float tanh (Cephes-style: odd polynomial for |a| < 0.625, else 1 - 2/(e^{2|a|}+1)),
// max error ~2 ulp.
inline V vexp_pos(V x) {  // e^x for 0 <= x <= 40
  const V fx = x * 1.44269504088896341f + 0.5f;
  const VI n = __builtin_convertvector(fx, VI);  // floor, since fx >= 0
  const V nf = __builtin_convertvector(n, V);
  V r = x - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  const V r2 = r * r;
  V p = 1.9875691500e-4f * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const VI bits = (n + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline V vtanh(V a) {
  const V z = a < 0.0f ? -a : a;
  const V z2 = a * a;
  V p = -5.70498872745e-3f * z2 + 2.06390887954e-2f;
  p = p * z2 - 5.37397155531e-2f;
  p = p * z2 + 1.33314422036e-1f;
  p = p * z2 - 3.33332819422e-1f;
  const V small = p * z2 * a + a;
  const V forty = simd::bcast(40.0f);
  const V e = vexp_pos(z < 20.0f ? z + z : forty);
  V big = 1.0f - 2.0f / (e + 1.0f);
  big = a < 0.0f ? -big : big;
  const V r = z < 0.625f ? small : big;
  return a == a ? r : a;  // NaN in -> NaN out
}

struct SimdMath {
  static V tanh(V a) { return vtanh(a); }
  static V sqrt(V a) {
    V r;
    for (int i = 0; i < L; ++i) r[i] = std::sqrt(a[i]);
    return r;
  }
};

inline void adam_vec(float* __restrict w, float* __restrict m, float* __restrict v,
                     float* __restrict x, const float* __restrict gx, const AdamConsts& k) {
  V wv = simd::load(w), mv = simd::load(m), vv = simd::load(v), xv;
  adam_update<SimdMath>(wv, mv, vv, xv, simd::load(gx), k);
  simd::store(w, wv);
  simd::store(m, mv);
  simd::store(v, vv);
  simd::store(x, xv);
}

void adam_range(float* w, float* m, float* v, float* x, const float* gx, int64_t n,
                const AdamConsts& k) {
  int64_t i = 0;
  for (; i + L <= n; i += L) adam_vec(w + i, m + i, v + i, x + i, gx + i, k);
  if (i < n) {  // tail through a padded lane buffer: identical math to the vector body
    const int64_t r = n - i;
    float tw[L] = {}, tm[L] = {}, tv[L] = {}, tx[L] = {}, tg[L] = {};
    std::copy(w + i, w + n, tw);
    std::copy(m + i, m + n, tm);
    std::copy(v + i, v + n, tv);
    std::copy(gx + i, gx + n, tg);
    adam_vec(tw, tm, tv, tx, tg, k);
    std::copy(tw, tw + r, w + i);
    std::copy(tm, tm + r, m + i);
    std::copy(tv, tv + r, v + i);
    std::copy(tx, tx + r, x + i);
  }
}

}  // namespace

void tanh_adam_step_cpu(at::Tensor& w, at::Tensor& m, at::Tensor& v, at::Tensor& x,
                        const at::Tensor& grad_x, const at::Tensor& step, const at::Tensor& lr,
                        double lo, double hi, double beta1, double beta2, double eps) {
  check_adam_inputs(w, m, v, x, grad_x, step, lr, lo, hi, beta1, beta2, eps);
  const int64_t B = w.size(0);
  const int64_t per = w.numel() / B;
  if (per == 0) return;
  const at::Tensor stepc = step.contiguous(), lrc = lr.contiguous();
  const float* sp = stepc.const_data_ptr<float>();
  const float* lp = lrc.const_data_ptr<float>();
  float* wp = w.mutable_data_ptr<float>();
  float* mp = m.mutable_data_ptr<float>();
  float* vp = v.mutable_data_ptr<float>();
  float* xp = x.mutable_data_ptr<float>();
  const float* gp = grad_x.const_data_ptr<float>();

  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = (per + kChunk - 1) / kChunk;
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / chunks, c = t % chunks;
      if (lp[b] == 0.0f) continue;  // frozen image
      const AdamConsts k = adam_consts(lo, hi, beta1, beta2, eps, sp[b], lp[b]);
      const int64_t off = b * per + c * kChunk;
      adam_range(wp + off, mp + off, vp + off, xp + off, gp + off, std::min(kChunk, per - c * kChunk), k);
    }
  });
}

}  // namespace fawkes_fast
