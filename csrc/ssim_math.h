// Per-pixel SSIM math shared by the CPU (scalars and SIMD vectors) and CUDA kernels, plus the
// tf.image.ssim constants. Everything here compiles with g++ and nvcc alike (FF_HD).
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define FF_HD __host__ __device__ __forceinline__
#else
#define FF_HD inline
#endif

namespace fawkes_fast {

// ---- SSIM constants (tf.image.ssim / skimage gaussian_weights=True) --------------------------
constexpr int kWin = 11;   // window size
constexpr int kHalf = 5;   // (kWin - 1) / 2; the VALID map is (H-10) x (W-10)
constexpr double kSigma = 1.5;
constexpr double kK1 = 0.01;
constexpr double kK2 = 0.03;

// Normalised 1-D Gaussian taps g[0..10] (the 2-D window is g g^T). Host only.
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

// Values are centred on c = data_range / 2 before the moments are taken, so that
// E[x^2] - mu^2 keeps its precision in fp32 (variances are shift invariant).
template <typename T>
struct SsimConsts {
  T c, C1, C2;
};

template <typename T>
inline SsimConsts<T> ssim_consts(double data_range) {
  const T dr = T(data_range);
  return {dr / T(2), T(kK1 * kK1) * dr * dr, T(kK2 * kK2) * dr * dr};
}

// One tap of the moment blur: adds g * (x', y', x'^2, y'^2, x'y') to the 5 accumulators a[0..4]
// (x', y': centred values; V a scalar or a SIMD vector).
template <typename V>
FF_HD void add_moment_tap(V gk, V xv, V yv, V* a) {
  const V gx = gk * xv, gy = gk * yv;
  a[0] += gx;
  a[1] += gy;
  a[2] += gx * xv;
  a[3] += gy * yv;
  a[4] += gx * yv;
}

// SSIM at one output pixel from centred moments (V: a scalar or a SIMD vector of T).
// mx, my: blurred (x - c), (y - c); exx, eyy, exy: blurred (x-c)^2, (y-c)^2, (x-c)(y-c).
// With kGrad, also dS/dmx, dS/dexx, dS/dexy (the derivatives w.r.t. the centred moments).
template <bool kGrad, typename V, typename T>
FF_HD V ssim_point(V mx, V my, V exx, V eyy, V exy, const SsimConsts<T>& k, V* dmu, V* dxx,
                   V* dxy) {
  const V mxu = mx + k.c, myu = my + k.c;
  const V a1 = T(2) * mxu * myu + k.C1;
  const V a2 = T(2) * (exy - mx * my) + k.C2;
  const V b1 = mxu * mxu + myu * myu + k.C1;
  const V b2 = (exx - mx * mx) + (eyy - my * my) + k.C2;
  const V inv_b1 = T(1) / b1;
  const V inv_b2 = T(1) / b2;
  const V inv_d = inv_b1 * inv_b2;
  const V s = a1 * a2 * inv_d;
  if (kGrad) {
    *dmu = (T(2) * myu * a2 - T(2) * my * a1 - s * (T(2) * mxu * b2 - T(2) * mx * b1)) * inv_d;
    *dxx = -s * inv_b2;
    *dxy = T(2) * a1 * inv_d;
  }
  return s;
}

// dSSIM/dx at one input pixel: r0, r1, r2 are the transposed blurs of the three partial maps,
// xc, yc the centred pixel values. The chain rule through the moments mx, exx, exy.
template <typename V, typename T>
FF_HD V ssim_grad_pixel(V r0, V r1, V r2, V xc, V yc, T scale) {
  return scale * (r0 + T(2) * xc * r1 + yc * r2);
}

}  // namespace fawkes_fast
