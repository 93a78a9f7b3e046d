// The tiled SSIM passes of the CUDA kernels, written as data-parallel phases: each phase loops
// `for (idx = tid; idx < n; idx += nt)` over one shared-memory array, and the kernel puts a
// __syncthreads() between phases. Run with tid = 0, nt = 1 one after the other, the same
// functions emulate a block on the host: csrc/tests/test_ops.cpp checks the CUDA tiling that way
// on a machine without a GPU.
//
// Forward tile (kFwdH x kFwdW outputs): load (H+10) x (W+10) centred x, y -> horizontal moments
// (H+10) x W -> vertical moments + SSIM.
// Backward tile (kBwdH x kBwdW input pixels of dx): the partial maps it needs, (H+10) x (W+10),
// are recomputed from (H+20) x (W+20) pixels instead of being stored by the forward (they would
// cost 3 maps written and read back). Then the transposed vertical and horizontal blurs.
#pragma once

#include <cstdint>

#include "ssim_math.h"

namespace fawkes_fast {
namespace tile {

template <typename T>
struct Shape;
template <>
struct Shape<float> {
  static constexpr int kFwdH = 32, kFwdW = 32, kBwdH = 16, kBwdW = 32;
};
template <>
struct Shape<double> {  // double is for gradcheck: smaller tiles keep shared memory < 48 KB
  static constexpr int kFwdH = 8, kFwdW = 32, kBwdH = 8, kBwdW = 16;
};

// Shared-memory layout of one forward block, in elements of T.
template <typename T>
struct FwdLayout {
  static constexpr int H = Shape<T>::kFwdH, W = Shape<T>::kFwdW;
  static constexpr int IH = H + 2 * kHalf, IW = W + 2 * kHalf;  // centred x, y
  static constexpr int kIn = IH * IW;
  static constexpr int kMomPlane = IH * W;  // 5 horizontal-moment planes
  static constexpr int kElems = 2 * kIn + 5 * kMomPlane;
};

// Shared-memory layout of one backward block. The partial maps reuse the x, y area and the
// transposed vertical blur reuses the moment area (each is dead by then).
template <typename T>
struct BwdLayout {
  static constexpr int H = Shape<T>::kBwdH, W = Shape<T>::kBwdW;
  static constexpr int IH = H + 4 * kHalf, IW = W + 4 * kHalf;  // centred x, y
  static constexpr int PH = H + 2 * kHalf, PW = W + 2 * kHalf;  // partial maps
  static constexpr int kIn = IH * IW;
  static constexpr int kMomPlane = IH * PW;
  static constexpr int kPartPlane = PH * PW;
  static constexpr int kVPlane = H * PW;
  static constexpr int kElems = 2 * kIn + 5 * kMomPlane;
  static_assert(3 * kPartPlane <= 2 * kIn, "partials must fit where x, y were");
  static_assert(3 * kVPlane <= 5 * kMomPlane, "the vertical blur must fit where the moments were");
};

// Centred pixels of rows gy0.., cols gx0.. (rows x cols; 0 outside the image).
template <typename T>
FF_HD void load_centred(const T* xp, const T* yp, int H, int W, int gy0, int gx0, int rows,
                        int cols, T c, T* sx, T* sy, int tid, int nt) {
  for (int idx = tid; idx < rows * cols; idx += nt) {
    const int gy = gy0 + idx / cols, gx = gx0 + idx % cols;
    const bool in = gy >= 0 && gy < H && gx >= 0 && gx < W;
    const int64_t o = int64_t(gy) * W + gx;
    sx[idx] = in ? xp[o] - c : T(0);
    sy[idx] = in ? yp[o] - c : T(0);
  }
}

// Horizontal 11-tap pass: 5 moment planes of rows x cols_out from inputs of row stride ld.
template <typename T>
FF_HD void horizontal_moments(const T* sx, const T* sy, int ld, int rows, int cols_out,
                              const T* g, T* mom, int tid, int nt) {
  const int plane = rows * cols_out;
  for (int idx = tid; idx < plane; idx += nt) {
    const int r = idx / cols_out, col = idx % cols_out;
    T a[5] = {0, 0, 0, 0, 0};
#pragma unroll
    for (int k = 0; k < kWin; ++k) add_moment_tap(g[k], sx[r * ld + col + k], sy[r * ld + col + k], a);
#pragma unroll
    for (int m = 0; m < 5; ++m) mom[m * plane + idx] = a[m];
  }
}

// The vertical 11-tap blur of the 5 moment planes at R vertically adjacent outputs (rows
// r0 .. r0+R-1, column col): each moment row is read from shared memory once for the R outputs it
// feeds (shared-memory loads, not arithmetic, bound these passes).
template <int R, typename T>
FF_HD void vertical_moments(const T* mom, int plane, int cols, int r0, int col, const T* g,
                            T (&a)[R][5]) {
#pragma unroll
  for (int q = 0; q < R; ++q) {
#pragma unroll
    for (int m = 0; m < 5; ++m) a[q][m] = 0;
  }
#pragma unroll
  for (int t = 0; t < kWin + R - 1; ++t) {
    T v[5];
#pragma unroll
    for (int m = 0; m < 5; ++m) v[m] = mom[m * plane + (r0 + t) * cols + col];
#pragma unroll
    for (int q = 0; q < R; ++q) {
      const int k = t - q;  // the tap row r0 + t has for output row r0 + q
      if (k >= 0 && k < kWin) {
#pragma unroll
        for (int m = 0; m < 5; ++m) a[q][m] += g[k] * v[m];
      }
    }
  }
}

// Forward, last phase: this thread's sum of the SSIM map over the tile at (oy0, ox0).
template <typename T>
FF_HD T forward_sum(const T* mom, int Ho, int Wo, int oy0, int ox0, const T* g,
                    const SsimConsts<T>& k, int tid, int nt) {
  using L = FwdLayout<T>;
  constexpr int R = 4;  // output rows per thread
  static_assert(L::H % R == 0, "tile height must be a multiple of R");
  T local = 0;
  for (int idx = tid; idx < (L::H / R) * L::W; idx += nt) {
    const int r0 = (idx / L::W) * R, col = idx % L::W;
    if (oy0 + r0 >= Ho || ox0 + col >= Wo) continue;
    T a[R][5];
    vertical_moments<R>(mom, L::kMomPlane, L::W, r0, col, g, a);
#pragma unroll
    for (int q = 0; q < R; ++q) {
      if (oy0 + r0 + q < Ho) {
        local += ssim_point<false>(a[q][0], a[q][1], a[q][2], a[q][3], a[q][4], k, (T*)nullptr,
                                   (T*)nullptr, (T*)nullptr);
      }
    }
  }
  return local;
}

// Backward: the 3 partial maps dS/d(mx, exx, exy) over the tile's (H+10) x (W+10) window,
// whose origin is (iy0 - 10, ix0 - 10) in map coordinates; 0 outside the (Ho, Wo) map.
template <typename T>
FF_HD void backward_partials(const T* mom, int Ho, int Wo, int iy0, int ix0, const T* g,
                             const SsimConsts<T>& k, T* part, int tid, int nt) {
  using L = BwdLayout<T>;
  constexpr int R = 2;  // partial-map rows per thread
  static_assert(L::PH % R == 0, "partial-map height must be a multiple of R");
  for (int idx = tid; idx < (L::PH / R) * L::PW; idx += nt) {
    const int r0 = (idx / L::PW) * R, cc = idx % L::PW;
    T a[R][5];
    vertical_moments<R>(mom, L::kMomPlane, L::PW, r0, cc, g, a);
#pragma unroll
    for (int q = 0; q < R; ++q) {
      const int py = iy0 - 2 * kHalf + r0 + q, px = ix0 - 2 * kHalf + cc;
      T d0 = 0, d1 = 0, d2 = 0;
      if (py >= 0 && py < Ho && px >= 0 && px < Wo) {
        ssim_point<true>(a[q][0], a[q][1], a[q][2], a[q][3], a[q][4], k, &d0, &d1, &d2);
      }
      const int o = (r0 + q) * L::PW + cc;
      part[o] = d0;
      part[L::kPartPlane + o] = d1;
      part[2 * L::kPartPlane + o] = d2;
    }
  }
}

// Backward: transposed vertical blur, V_m(r, cc) = sum_t g[t] P_m(r + 10 - t, cc), r < H.
template <typename T>
FF_HD void backward_vertical(const T* part, const T* g, T* vt, int tid, int nt) {
  using L = BwdLayout<T>;
  for (int idx = tid; idx < L::kVPlane; idx += nt) {
    const int r = idx / L::PW, cc = idx % L::PW;
    T a0 = 0, a1 = 0, a2 = 0;
#pragma unroll
    for (int t = 0; t < kWin; ++t) {
      const int o = (r + 2 * kHalf - t) * L::PW + cc;
      a0 += g[t] * part[o];
      a1 += g[t] * part[L::kPartPlane + o];
      a2 += g[t] * part[2 * L::kPartPlane + o];
    }
    vt[idx] = a0;
    vt[L::kVPlane + idx] = a1;
    vt[2 * L::kVPlane + idx] = a2;
  }
}

// Backward, last phase: transposed horizontal blur, combined with the pixels into dx.
template <typename T>
FF_HD void backward_dx(const T* vt, const T* xp, const T* yp, int H, int W, int iy0, int ix0,
                       const T* g, T c, T scale, T* dxp, int tid, int nt) {
  using L = BwdLayout<T>;
  for (int idx = tid; idx < L::H * L::W; idx += nt) {
    const int r = idx / L::W, col = idx % L::W;
    const int i = iy0 + r, j = ix0 + col;
    if (i >= H || j >= W) continue;
    T a0 = 0, a1 = 0, a2 = 0;
#pragma unroll
    for (int t = 0; t < kWin; ++t) {
      const int o = r * L::PW + col + 2 * kHalf - t;
      a0 += g[t] * vt[o];
      a1 += g[t] * vt[L::kVPlane + o];
      a2 += g[t] * vt[2 * L::kVPlane + o];
    }
    const int64_t o = int64_t(i) * W + j;
    dxp[o] = ssim_grad_pixel(a0, a1, a2, xp[o] - c, yp[o] - c, scale);
  }
}

}  // namespace tile
}  // namespace fawkes_fast
