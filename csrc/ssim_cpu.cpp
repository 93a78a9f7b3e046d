// CPU SSIM (tf.image.ssim conventions): fused separable-Gaussian forward (+ partial derivative
// maps) and its transposed backward. Parallel over (plane, row block) with at::parallel_for,
// inner loops on 32-byte SIMD vectors over columns.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "fawkes_fast.h"
#include "simd.h"

namespace fawkes_fast {
namespace {

using simd::bcast;
using simd::load;
using simd::store;

struct Plan {
  int64_t planes, rows, blocks, block_rows;
};

// Split `rows` rows of each of `planes` planes into blocks of kBlockRows rows, the tasks threads take.
// The height is fixed, not sized to the thread count: the forward adds the blocks' sums in block
// order, so the SSIM is the same bits whatever the number of threads (issue #23).
constexpr int64_t kBlockRows = 16;

Plan make_plan(int64_t planes, int64_t rows) {
  return {planes, rows, (rows + kBlockRows - 1) / kBlockRows, kBlockRows};
}

// Forward for one (plane, output row range). Returns the sum of the SSIM map over the range.
template <typename T, bool kGrad>
double forward_rows(const T* __restrict xp, const T* __restrict yp, int64_t W, int64_t r0,
                    int64_t r1, const T* g, const SsimConsts<T>& sc, T* __restrict part, int64_t Ho,
                    int64_t Wo, T* __restrict buf) {
  using V = simd::vec<T>;
  constexpr int L = simd::kLanes<T>;
  const T* bmx = buf;  // the 5 moment rows: mx, my, exx, eyy, exy
  const T* bmy = buf + W;
  const T* bxx = buf + 2 * W;
  const T* byy = buf + 3 * W;
  const T* bxy = buf + 4 * W;
  const int64_t plane_out = Ho * Wo;
  const T c = sc.c;
  double total = 0.0;
  for (int64_t i = r0; i < r1; ++i) {
    // Vertical pass: rows i .. i+10 of x, y -> 5 moment rows of length W.
    int64_t j = 0;
    for (; j + L <= W; j += L) {
      V a[5] = {};
      for (int k = 0; k < kWin; ++k) {
        add_moment_tap(bcast<T>(g[k]), load<T>(xp + (i + k) * W + j) - c,
                       load<T>(yp + (i + k) * W + j) - c, a);
      }
      for (int mo = 0; mo < 5; ++mo) store<T>(buf + mo * W + j, a[mo]);
    }
    for (; j < W; ++j) {
      T a[5] = {};
      for (int k = 0; k < kWin; ++k) {
        add_moment_tap(g[k], T(xp[(i + k) * W + j] - c), T(yp[(i + k) * W + j] - c), a);
      }
      for (int mo = 0; mo < 5; ++mo) buf[mo * W + j] = a[mo];
    }
    // Horizontal pass + SSIM map (+ partials).
    T* prow = kGrad ? part + i * Wo : nullptr;  // map 0; maps 1, 2 at +plane_out, +2*plane_out
    V vsum = {};
    int64_t q = 0;
    for (; q + L <= Wo; q += L) {
      V amx = {}, amy = {}, axx = {}, ayy = {}, axy = {};
      for (int k = 0; k < kWin; ++k) {
        const V gk = bcast<T>(g[k]);
        amx += gk * load<T>(bmx + q + k);
        amy += gk * load<T>(bmy + q + k);
        axx += gk * load<T>(bxx + q + k);
        ayy += gk * load<T>(byy + q + k);
        axy += gk * load<T>(bxy + q + k);
      }
      V d0, d1, d2;
      const V s = ssim_point<kGrad>(amx, amy, axx, ayy, axy, sc, &d0, &d1, &d2);
      vsum += s;
      if (kGrad) {
        store<T>(prow + q, d0);
        store<T>(prow + plane_out + q, d1);
        store<T>(prow + 2 * plane_out + q, d2);
      }
    }
    double rsum = simd::hsum<T>(vsum);
    for (; q < Wo; ++q) {
      T amx = 0, amy = 0, axx = 0, ayy = 0, axy = 0;
      for (int k = 0; k < kWin; ++k) {
        amx += g[k] * bmx[q + k];
        amy += g[k] * bmy[q + k];
        axx += g[k] * bxx[q + k];
        ayy += g[k] * byy[q + k];
        axy += g[k] * bxy[q + k];
      }
      T d0, d1, d2;
      const T s = ssim_point<kGrad>(amx, amy, axx, ayy, axy, sc, &d0, &d1, &d2);
      rsum += double(s);
      if (kGrad) {
        prow[q] = d0;
        prow[plane_out + q] = d1;
        prow[2 * plane_out + q] = d2;
      }
    }
    total += rsum;
  }
  return total;
}

// Forward over all planes; writes the per-image SSIM means to ssim_out and, with kGrad, the
// partial maps to part (B*C planes of 3 maps).
template <typename T, bool kGrad>
void forward_all(const T* x, const T* y, int64_t B, int64_t C, int64_t H, int64_t W,
                 double data_range, T* part, T* ssim_out) {
  const int64_t Ho = H - 2 * kHalf, Wo = W - 2 * kHalf;
  T g[kWin];
  gaussian_taps(g);
  const SsimConsts<T> k = ssim_consts<T>(data_range);
  const Plan plan = make_plan(B * C, Ho);
  std::vector<double> sums(plan.planes * plan.blocks, 0.0);
  at::parallel_for(0, plan.planes * plan.blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> buf(5 * W + 64);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t p = t / plan.blocks, blk = t % plan.blocks;
      const int64_t r0 = blk * plan.block_rows, r1 = std::min(Ho, r0 + plan.block_rows);
      sums[t] = forward_rows<T, kGrad>(x + p * H * W, y + p * H * W, W, r0, r1, g, k,
                                       kGrad ? part + p * 3 * Ho * Wo : nullptr, Ho, Wo, buf.data());
    }
  });
  const double n = double(C) * double(Ho) * double(Wo);
  for (int64_t b = 0; b < B; ++b) {
    double s = 0.0;
    for (int64_t t = b * C * plan.blocks; t < (b + 1) * C * plan.blocks; ++t) s += sums[t];
    ssim_out[b] = T(s / n);
  }
}

// Backward for one plane and input row range: dx = scale * (G^T*P0 + 2(x-c) G^T*P1 + (y-c) G^T*P2).
template <typename T>
void backward_rows(const T* __restrict xp, const T* __restrict yp, const T* __restrict part,
                   T* __restrict dxp, int64_t H, int64_t W, int64_t r0, int64_t r1, const T* g,
                   T c, T scale, T* __restrict tbuf) {
  using V = simd::vec<T>;
  constexpr int L = simd::kLanes<T>;
  const int64_t Ho = H - 2 * kHalf, Wo = W - 2 * kHalf;
  const int64_t plane_out = Ho * Wo;
  const int64_t tl = Wo + 2 * (kWin - 1);  // padded row: 10 zeros | Wo values | 10 zeros
  T* t0 = tbuf;
  T* t1 = tbuf + tl;
  T* t2 = tbuf + 2 * tl;
  for (int m = 0; m < 3; ++m) {
    T* tm = tbuf + m * tl;
    std::fill(tm, tm + (kWin - 1), T(0));
    std::fill(tm + (kWin - 1) + Wo, tm + tl, T(0));
  }
  const T* p0 = part;
  const T* p1 = part + plane_out;
  const T* p2 = part + 2 * plane_out;
  for (int64_t i = r0; i < r1; ++i) {
    const int kmin = int(std::max<int64_t>(0, i - (Ho - 1)));
    const int kmax = int(std::min<int64_t>(kWin - 1, i));
    // Transposed vertical pass: T_m(i, q) = sum_k g[k] P_m(i - k, q).
    int64_t q = 0;
    for (; q + L <= Wo; q += L) {
      V a0 = {}, a1 = {}, a2 = {};
      for (int k = kmin; k <= kmax; ++k) {
        const V gk = bcast<T>(g[k]);
        const int64_t off = (i - k) * Wo + q;
        a0 += gk * load<T>(p0 + off);
        a1 += gk * load<T>(p1 + off);
        a2 += gk * load<T>(p2 + off);
      }
      store<T>(t0 + (kWin - 1) + q, a0);
      store<T>(t1 + (kWin - 1) + q, a1);
      store<T>(t2 + (kWin - 1) + q, a2);
    }
    for (; q < Wo; ++q) {
      T a0 = 0, a1 = 0, a2 = 0;
      for (int k = kmin; k <= kmax; ++k) {
        const int64_t off = (i - k) * Wo + q;
        a0 += g[k] * p0[off];
        a1 += g[k] * p1[off];
        a2 += g[k] * p2[off];
      }
      t0[(kWin - 1) + q] = a0;
      t1[(kWin - 1) + q] = a1;
      t2[(kWin - 1) + q] = a2;
    }
    // Transposed horizontal pass: R_m(i, j) = sum_k g[k] T_m(i, j - k), then combine.
    const T* xr = xp + i * W;
    const T* yr = yp + i * W;
    T* dr = dxp + i * W;
    int64_t j = 0;
    for (; j + L <= W; j += L) {
      V a0 = {}, a1 = {}, a2 = {};
      for (int k = 0; k < kWin; ++k) {
        const V gk = bcast<T>(g[k]);
        const int64_t off = (kWin - 1) + j - k;
        a0 += gk * load<T>(t0 + off);
        a1 += gk * load<T>(t1 + off);
        a2 += gk * load<T>(t2 + off);
      }
      const V xv = load<T>(xr + j) - c;
      const V yv = load<T>(yr + j) - c;
      store<T>(dr + j, ssim_grad_pixel(a0, a1, a2, xv, yv, scale));
    }
    for (; j < W; ++j) {
      T a0 = 0, a1 = 0, a2 = 0;
      for (int k = 0; k < kWin; ++k) {
        const int64_t off = (kWin - 1) + j - k;
        a0 += g[k] * t0[off];
        a1 += g[k] * t1[off];
        a2 += g[k] * t2[off];
      }
      dr[j] = ssim_grad_pixel(a0, a1, a2, T(xr[j] - c), T(yr[j] - c), scale);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> ssim_forward_cpu(const at::Tensor& x, const at::Tensor& y,
                                                    double data_range, bool need_grad) {
  check_ssim_inputs(x, y, data_range);
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor out = at::empty({B}, xc.options());
  at::Tensor part = need_grad ? at::empty({B, C, 3, H - 2 * kHalf, W - 2 * kHalf}, xc.options())
                              : at::empty({0}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "ssim_forward_cpu", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    const scalar_t* yp = yc.const_data_ptr<scalar_t>();
    if (need_grad) {
      forward_all<scalar_t, true>(xp, yp, B, C, H, W, data_range, part.mutable_data_ptr<scalar_t>(),
                                  out.mutable_data_ptr<scalar_t>());
    } else {
      forward_all<scalar_t, false>(xp, yp, B, C, H, W, data_range, nullptr,
                                   out.mutable_data_ptr<scalar_t>());
    }
  });
  return {out, part};
}

at::Tensor ssim_backward_cpu(const at::Tensor& grad_ssim, const at::Tensor& x, const at::Tensor& y,
                             const at::Tensor& saved, double data_range) {
  check_ssim_inputs(x, y, data_range);
  check_ssim_backward_inputs(grad_ssim, x, saved);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = H - 2 * kHalf, Wo = W - 2 * kHalf;
  // an empty `saved` (the forward ran without need_grad): recompute the partial maps
  const at::Tensor pc = saved.numel() ? saved.contiguous() : std::get<1>(ssim_forward_cpu(x, y, data_range, true));
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  const at::Tensor gc = grad_ssim.to(x.scalar_type()).contiguous();
  at::Tensor dx = at::empty({B, C, H, W}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "ssim_backward_cpu", [&] {
    using T = scalar_t;
    T g[kWin];
    gaussian_taps(g);
    const T c = T(data_range) / T(2);
    const double n = double(C) * double(Ho) * double(Wo);
    const T* xptr = xc.const_data_ptr<T>();
    const T* yptr = yc.const_data_ptr<T>();
    const T* pptr = pc.const_data_ptr<T>();
    const T* gptr = gc.const_data_ptr<T>();
    T* dptr = dx.mutable_data_ptr<T>();
    const Plan plan = make_plan(B * C, H);
    at::parallel_for(0, plan.planes * plan.blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> tbuf(3 * (Wo + 2 * (kWin - 1)) + 64);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t p = t / plan.blocks, blk = t % plan.blocks;
        const int64_t r0 = blk * plan.block_rows, r1 = std::min(H, r0 + plan.block_rows);
        const T scale = T(double(gptr[p / C]) / n);
        backward_rows<T>(xptr + p * H * W, yptr + p * H * W, pptr + p * 3 * Ho * Wo,
                         dptr + p * H * W, H, W, r0, r1, g, c, scale, tbuf.data());
      }
    });
  });
  return dx;
}

}  // namespace fawkes_fast
