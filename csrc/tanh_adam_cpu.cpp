// CPU fused tanh-space Adam step. One pass over memory per element:
//   t  = tanh(w);  g = (g_x [+ scale2[b] * grad2]) * (hi - lo)/2 * (1 - t^2)
//   m  = m + (1-b1)(g - m);  v = b2 v + (1-b2) g^2          (torch.optim.Adam order of ops)
//   w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps);    x = lo + (hi-lo)(tanh(w)+1)/2
// Images with lr[b] == 0 are left untouched (w, m, v, x).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

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

struct ImageConsts {
  float lo, rng, half_rng, omb1, b2, omb2, bc2s, neg_step_size, eps, s2;
};

inline void adam_vec(float* __restrict w, float* __restrict m, float* __restrict v,
                     float* __restrict x, const float* __restrict gx, const float* __restrict g2,
                     const ImageConsts& k) {
  const V wv = simd::load(w);
  const V t = vtanh(wv);
  V gi = simd::load(gx);
  if (g2 != nullptr) gi = gi + k.s2 * simd::load(g2);
  const V g = (gi * k.half_rng) * (1.0f - t * t);
  V mv = simd::load(m);
  mv = mv + k.omb1 * (g - mv);
  V vv = simd::load(v);
  vv = vv * k.b2 + (k.omb2 * g) * g;
  V sq;
  for (int i = 0; i < L; ++i) sq[i] = std::sqrt(vv[i]);
  const V denom = sq / k.bc2s + k.eps;
  const V wn = wv + k.neg_step_size * (mv / denom);
  const V xn = (k.rng * (vtanh(wn) + 1.0f)) / 2.0f + k.lo;
  simd::store(w, wn);
  simd::store(m, mv);
  simd::store(v, vv);
  simd::store(x, xn);
}

void adam_range(float* w, float* m, float* v, float* x, const float* gx, const float* g2,
                int64_t n, const ImageConsts& k) {
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    adam_vec(w + i, m + i, v + i, x + i, gx + i, g2 ? g2 + i : nullptr, k);
  }
  if (i < n) {  // tail through a padded lane buffer: identical math to the vector body
    const int64_t r = n - i;
    float tw[L] = {}, tm[L] = {}, tv[L] = {}, tx[L] = {}, tg[L] = {}, tg2[L] = {};
    std::copy(w + i, w + n, tw);
    std::copy(m + i, m + n, tm);
    std::copy(v + i, v + n, tv);
    std::copy(gx + i, gx + n, tg);
    if (g2) std::copy(g2 + i, g2 + n, tg2);
    adam_vec(tw, tm, tv, tx, tg, g2 ? tg2 : nullptr, k);
    std::copy(tw, tw + r, w + i);
    std::copy(tm, tm + r, m + i);
    std::copy(tv, tv + r, v + i);
    std::copy(tx, tx + r, x + i);
  }
}

}  // namespace

void tanh_adam_step_cpu(at::Tensor& w, at::Tensor& m, at::Tensor& v, at::Tensor& x,
                        const at::Tensor& grad_x, const at::Tensor& step, const at::Tensor& lr,
                        double lo, double hi, double beta1, double beta2, double eps,
                        const std::optional<at::Tensor>& grad2,
                        const std::optional<at::Tensor>& scale2) {
  check_adam_inputs(w, m, v, x, grad_x, step, lr, lo, hi, grad2, scale2);
  TORCH_CHECK(w.device().is_cpu(), "tanh_adam_step_cpu: expected CPU tensors");
  const int64_t B = w.size(0);
  const int64_t per = B > 0 ? w.numel() / B : 0;
  if (per == 0) return;
  const at::Tensor stepc = step.contiguous(), lrc = lr.contiguous();
  const at::Tensor s2c = scale2.has_value() ? scale2->contiguous() : at::Tensor();
  const float* sp = stepc.const_data_ptr<float>();
  const float* lp = lrc.const_data_ptr<float>();
  const float* s2p = scale2.has_value() ? s2c.const_data_ptr<float>() : nullptr;
  float* wp = w.mutable_data_ptr<float>();
  float* mp = m.mutable_data_ptr<float>();
  float* vp = v.mutable_data_ptr<float>();
  float* xp = x.mutable_data_ptr<float>();
  const float* gp = grad_x.const_data_ptr<float>();
  const float* g2p = grad2.has_value() ? grad2->const_data_ptr<float>() : nullptr;

  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = (per + kChunk - 1) / kChunk;
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / chunks, c = t % chunks;
      const float lrb = lp[b];
      if (lrb == 0.0f) continue;  // frozen image
      const double st = double(sp[b]);
      const double bc1 = 1.0 - std::pow(beta1, st);
      const double bc2 = 1.0 - std::pow(beta2, st);
      ImageConsts k;
      k.lo = float(lo);
      k.rng = float(hi - lo);
      k.half_rng = float(hi - lo) * 0.5f;
      k.omb1 = float(1.0 - beta1);
      k.b2 = float(beta2);
      k.omb2 = float(1.0 - beta2);
      k.bc2s = float(std::sqrt(bc2));
      k.neg_step_size = float(-(double(lrb) / bc1));
      k.eps = float(eps);
      k.s2 = s2p ? s2p[b] : 0.0f;
      const int64_t off = b * per + c * kChunk;
      const int64_t n = std::min(kChunk, per - c * kChunk);
      adam_range(wp + off, mp + off, vp + off, xp + off, gp + off, g2p ? g2p + off : nullptr, n, k);
    }
  });
}

}  // namespace fawkes_fast
