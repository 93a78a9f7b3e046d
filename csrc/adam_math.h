// The tanh-space Adam update, shared by the CPU (SIMD vectors) and CUDA (scalars) kernels:
//   t  = tanh(w);  g = g_x * (hi - lo)/2 * (1 - t^2)
//   m  = m + (1-b1)(g - m);  v = b2 v + (1-b2) g^2          (torch.optim.Adam's order of ops)
//   w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps);    x = lo + (hi-lo)(tanh(w)+1)/2
#pragma once

#include <math.h>

#include "ssim_math.h"  // FF_HD

namespace fawkes_fast {

// Per-image constants of one step (bias corrections in fp64, as torch.optim.Adam).
struct AdamConsts {
  float lo, rng, half_rng, omb1, b2, omb2, bc2s, neg_step_size, eps;
};

FF_HD AdamConsts adam_consts(double lo, double hi, double beta1, double beta2, double eps,
                             float step, float lr) {
  const double st = double(step);
  const double bc1 = 1.0 - ::pow(beta1, st);
  const double bc2 = 1.0 - ::pow(beta2, st);
  AdamConsts k;
  k.lo = float(lo);
  k.rng = float(hi - lo);
  k.half_rng = float(hi - lo) * 0.5f;
  k.omb1 = float(1.0 - beta1);
  k.b2 = float(beta2);
  k.omb2 = float(1.0 - beta2);
  k.bc2s = float(::sqrt(bc2));
  k.neg_step_size = float(-(double(lr) / bc1));
  k.eps = float(eps);
  return k;
}

// One update of w, m, v and x from the image-space gradient gi. V is float or a SIMD vector;
// Math supplies tanh(V) and sqrt(V) for it.
template <typename Math, typename V>
FF_HD void adam_update(V& w, V& m, V& v, V& x, V gi, const AdamConsts& k) {
  const V t = Math::tanh(w);
  const V g = (gi * k.half_rng) * (1.0f - t * t);
  m = m + k.omb1 * (g - m);
  v = v * k.b2 + (k.omb2 * g) * g;
  const V denom = Math::sqrt(v) / k.bc2s + k.eps;
  w = w + k.neg_step_size * (m / denom);
  x = (k.rng * (Math::tanh(w) + 1.0f)) / 2.0f + k.lo;
}

}  // namespace fawkes_fast
