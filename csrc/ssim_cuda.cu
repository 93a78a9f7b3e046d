// CUDA SSIM (tf.image.ssim conventions). One tiled shared-memory kernel for the forward
// (5 blurred moments -> SSIM map, per-block sums, optional partial-derivative maps) and one for
// the backward (transposed separable Gaussian of the 3 partial maps, combined with x and y).
// Accumulation in the input precision (fp32 for float32 inputs); image means reduced in fp64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fawkes_fast.h"

namespace fawkes_fast {
namespace {

template <typename T>
struct Taps {
  T g[kWin];
};

constexpr int kTW = 32;  // tile width = blockDim.x
constexpr int kBY = 8;   // blockDim.y
constexpr int kThreads = kTW * kBY;
template <typename T>
struct TileH {
  static constexpr int value = 16;  // float: 32x16 outputs per block (~25 KB shared memory)
};
template <>
struct TileH<double> {
  static constexpr int value = 8;  // double: 32x8 (~35 KB shared memory)
};

template <bool kGrad, typename T>
__device__ __forceinline__ T ssim_point(T mx, T my, T exx, T eyy, T exy, T c, T C1, T C2, T* dmu,
                                        T* dxx, T* dxy) {
  const T mxu = mx + c, myu = my + c;
  const T a1 = T(2) * mxu * myu + C1;
  const T a2 = T(2) * (exy - mx * my) + C2;
  const T b1 = mxu * mxu + myu * myu + C1;
  const T b2 = (exx - mx * mx) + (eyy - my * my) + C2;
  const T inv_b1 = T(1) / b1;
  const T inv_b2 = T(1) / b2;
  const T inv_d = inv_b1 * inv_b2;
  const T s = a1 * a2 * inv_d;
  if (kGrad) {
    *dmu = (T(2) * myu * a2 - T(2) * my * a1 - s * (T(2) * mxu * b2 - T(2) * mx * b1)) * inv_d;
    *dxx = -s * inv_b2;
    *dxy = T(2) * a1 * inv_d;
  }
  return s;
}

template <typename T>
__device__ __forceinline__ T block_sum(T v, T* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int tid = threadIdx.y * kTW + threadIdx.x;
  if ((tid & 31) == 0) red[tid >> 5] = v;
  __syncthreads();
  T s = 0;
  if (tid == 0) {
    for (int i = 0; i < kThreads / 32; ++i) s += red[i];
  }
  return s;
}

// grid: (ceil(Wo/TW), ceil(Ho/TH), B*C). Each block: TW x TH outputs of one plane.
template <typename T, bool kGrad, bool kMap>
__global__ void __launch_bounds__(kThreads)
    ssim_fwd_kernel(const T* __restrict__ x, const T* __restrict__ y, int H, int W, Taps<T> taps,
                    T c, T C1, T C2, T* __restrict__ part, T* __restrict__ map,
                    T* __restrict__ block_sums) {
  constexpr int TH = TileH<T>::value;
  constexpr int IH = TH + 2 * kHalf, IW = kTW + 2 * kHalf;
  __shared__ T sx[IH][IW + 1];
  __shared__ T sy[IH][IW + 1];
  __shared__ T sh[5][IH][kTW];
  __shared__ T red[kThreads / 32];
  const int Ho = H - 2 * kHalf, Wo = W - 2 * kHalf;
  const int64_t plane = blockIdx.z;
  const int ox0 = blockIdx.x * kTW, oy0 = blockIdx.y * TH;
  const T* xp = x + plane * H * W;
  const T* yp = y + plane * H * W;
  const int tid = threadIdx.y * kTW + threadIdx.x;

  for (int idx = tid; idx < IH * IW; idx += kThreads) {
    const int r = idx / IW, cc = idx % IW;
    const int gy = oy0 + r, gx = ox0 + cc;
    T xv = 0, yv = 0;
    if (gy < H && gx < W) {
      xv = xp[int64_t(gy) * W + gx] - c;
      yv = yp[int64_t(gy) * W + gx] - c;
    }
    sx[r][cc] = xv;
    sy[r][cc] = yv;
  }
  __syncthreads();
  // Horizontal pass: 5 moments for IH rows x TW columns.
  for (int idx = tid; idx < IH * kTW; idx += kThreads) {
    const int r = idx / kTW, col = idx % kTW;
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0;
#pragma unroll
    for (int k = 0; k < kWin; ++k) {
      const T gk = taps.g[k];
      const T xv = sx[r][col + k], yv = sy[r][col + k];
      const T gx = gk * xv, gy = gk * yv;
      a0 += gx;
      a1 += gy;
      a2 += gx * xv;
      a3 += gy * yv;
      a4 += gx * yv;
    }
    sh[0][r][col] = a0;
    sh[1][r][col] = a1;
    sh[2][r][col] = a2;
    sh[3][r][col] = a3;
    sh[4][r][col] = a4;
  }
  __syncthreads();
  // Vertical pass + SSIM.
  T local = 0;
  const int col = threadIdx.x;
  const int ox = ox0 + col;
  const int64_t plane_out = int64_t(Ho) * Wo;
  for (int r = threadIdx.y; r < TH; r += kBY) {
    const int oy = oy0 + r;
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0;
#pragma unroll
    for (int k = 0; k < kWin; ++k) {
      const T gk = taps.g[k];
      a0 += gk * sh[0][r + k][col];
      a1 += gk * sh[1][r + k][col];
      a2 += gk * sh[2][r + k][col];
      a3 += gk * sh[3][r + k][col];
      a4 += gk * sh[4][r + k][col];
    }
    if (oy < Ho && ox < Wo) {
      T d0, d1, d2;
      const T s = ssim_point<kGrad>(a0, a1, a2, a3, a4, c, C1, C2, &d0, &d1, &d2);
      local += s;
      const int64_t o = int64_t(oy) * Wo + ox;
      if (kMap) map[plane * plane_out + o] = s;
      if (kGrad) {
        T* pp = part + plane * 3 * plane_out + o;
        pp[0] = d0;
        pp[plane_out] = d1;
        pp[2 * plane_out] = d2;
      }
    }
  }
  if (block_sums != nullptr) {
    const T s = block_sum(local, red);
    if (tid == 0) {
      block_sums[plane * (gridDim.x * gridDim.y) + blockIdx.y * gridDim.x + blockIdx.x] = s;
    }
  }
}

// One block per image: out[b] = sum(block_sums[b, :]) / n, summed in fp64 (deterministic).
template <typename T>
__global__ void ssim_finalize_kernel(const T* __restrict__ block_sums, int64_t per_image, double n,
                                     T* __restrict__ out) {
  __shared__ double red[256];
  const int64_t b = blockIdx.x;
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < per_image; i += blockDim.x) s += double(block_sums[b * per_image + i]);
  red[threadIdx.x] = s;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) red[threadIdx.x] += red[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[b] = T(red[0] / n);
}

// grid: (ceil(W/TW), ceil(H/TH), B*C). Each block: TW x TH pixels of dx for one plane.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    ssim_bwd_kernel(const T* __restrict__ grad, const T* __restrict__ x, const T* __restrict__ y,
                    const T* __restrict__ part, int C, int H, int W, Taps<T> taps, T c, double inv_n,
                    T* __restrict__ dx) {
  constexpr int TH = TileH<T>::value;
  constexpr int IH = TH + 2 * kHalf, IW = kTW + 2 * kHalf;
  __shared__ T sp[3][IH][IW + 1];
  __shared__ T sv[3][TH][IW];
  const int Ho = H - 2 * kHalf, Wo = W - 2 * kHalf;
  const int64_t plane = blockIdx.z;
  const int ix0 = blockIdx.x * kTW, iy0 = blockIdx.y * TH;
  const int64_t plane_out = int64_t(Ho) * Wo;
  const T* pp = part + plane * 3 * plane_out;
  const int tid = threadIdx.y * kTW + threadIdx.x;
  // Load the partial maps around the tile: rows iy0-10 .. iy0+TH-1, cols ix0-10 .. ix0+TW-1.
  for (int idx = tid; idx < IH * IW; idx += kThreads) {
    const int r = idx / IW, cc = idx % IW;
    const int py = iy0 - 2 * kHalf + r, px = ix0 - 2 * kHalf + cc;
    const bool ok = py >= 0 && py < Ho && px >= 0 && px < Wo;
    const int64_t o = int64_t(py) * Wo + px;
    sp[0][r][cc] = ok ? pp[o] : T(0);
    sp[1][r][cc] = ok ? pp[plane_out + o] : T(0);
    sp[2][r][cc] = ok ? pp[2 * plane_out + o] : T(0);
  }
  __syncthreads();
  // Transposed vertical pass: V_m(iy0 + r, cc) = sum_k g[k] P_m(iy0 + r - k, cc).
  for (int idx = tid; idx < TH * IW; idx += kThreads) {
    const int r = idx / IW, cc = idx % IW;
    T a0 = 0, a1 = 0, a2 = 0;
#pragma unroll
    for (int k = 0; k < kWin; ++k) {
      const T gk = taps.g[k];
      a0 += gk * sp[0][r + 2 * kHalf - k][cc];
      a1 += gk * sp[1][r + 2 * kHalf - k][cc];
      a2 += gk * sp[2][r + 2 * kHalf - k][cc];
    }
    sv[0][r][cc] = a0;
    sv[1][r][cc] = a1;
    sv[2][r][cc] = a2;
  }
  __syncthreads();
  // Transposed horizontal pass and combination with x, y.
  const T scale = T(double(grad[plane / C]) * inv_n);
  const int col = threadIdx.x;
  const int ix = ix0 + col;
  for (int r = threadIdx.y; r < TH; r += kBY) {
    const int iy = iy0 + r;
    T a0 = 0, a1 = 0, a2 = 0;
#pragma unroll
    for (int k = 0; k < kWin; ++k) {
      const T gk = taps.g[k];
      a0 += gk * sv[0][r][col + 2 * kHalf - k];
      a1 += gk * sv[1][r][col + 2 * kHalf - k];
      a2 += gk * sv[2][r][col + 2 * kHalf - k];
    }
    if (iy < H && ix < W) {
      const int64_t o = plane * H * W + int64_t(iy) * W + ix;
      dx[o] = scale * (a0 + T(2) * (x[o] - c) * a1 + (y[o] - c) * a2);
    }
  }
}

void check_cuda_pair(const at::Tensor& x, double data_range) {
  TORCH_CHECK(x.is_cuda(), "fawkes_fast::ssim (CUDA): expected CUDA tensors");
  TORCH_CHECK(x.size(0) * x.size(1) <= 65535, "fawkes_fast::ssim (CUDA): B*C must be <= 65535");
  TORCH_CHECK(x.size(2) < (int64_t(1) << 30) && x.size(3) < (int64_t(1) << 30),
              "fawkes_fast::ssim (CUDA): image too large");
}

template <typename T, bool kGrad, bool kMap>
void launch_forward(const at::Tensor& xc, const at::Tensor& yc, double data_range, T* part, T* map,
                    at::Tensor* out) {
  constexpr int TH = TileH<T>::value;
  const int64_t B = xc.size(0), C = xc.size(1);
  const int H = int(xc.size(2)), W = int(xc.size(3));
  const int Ho = H - 2 * kHalf, Wo = W - 2 * kHalf;
  Taps<T> taps;
  gaussian_taps(taps.g);
  const T dr = T(data_range);
  const T c = dr / T(2);
  const T C1 = T(kK1 * kK1) * dr * dr;
  const T C2 = T(kK2 * kK2) * dr * dr;
  const dim3 grid((Wo + kTW - 1) / kTW, (Ho + TH - 1) / TH, unsigned(B * C));
  const dim3 block(kTW, kBY);
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor sums;
  T* sums_ptr = nullptr;
  if (out != nullptr) {
    sums = at::empty({B, C * int64_t(grid.x) * grid.y}, xc.options());
    sums_ptr = sums.mutable_data_ptr<T>();
  }
  ssim_fwd_kernel<T, kGrad, kMap><<<grid, block, 0, stream>>>(
      xc.const_data_ptr<T>(), yc.const_data_ptr<T>(), H, W, taps, c, C1, C2, part, map, sums_ptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (out != nullptr) {
    ssim_finalize_kernel<T><<<unsigned(B), 256, 0, stream>>>(
        sums_ptr, sums.size(1), double(C) * double(Ho) * double(Wo), out->mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> ssim_forward_cuda(const at::Tensor& x, const at::Tensor& y,
                                                     double data_range, bool need_grad) {
  check_ssim_inputs(x, y, data_range);
  check_cuda_pair(x, data_range);
  const at::cuda::OptionalCUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  const int64_t B = x.size(0), C = x.size(1), Ho = x.size(2) - 2 * kHalf, Wo = x.size(3) - 2 * kHalf;
  at::Tensor out = at::empty({B}, xc.options());
  at::Tensor part = need_grad ? at::empty({B, C, 3, Ho, Wo}, xc.options()) : at::empty({0}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "ssim_forward_cuda", [&] {
    if (need_grad) {
      launch_forward<scalar_t, true, false>(xc, yc, data_range, part.mutable_data_ptr<scalar_t>(), nullptr, &out);
    } else {
      launch_forward<scalar_t, false, false>(xc, yc, data_range, nullptr, nullptr, &out);
    }
  });
  return {out, part};
}

at::Tensor ssim_map_cuda(const at::Tensor& x, const at::Tensor& y, double data_range) {
  check_ssim_inputs(x, y, data_range);
  check_cuda_pair(x, data_range);
  const at::cuda::OptionalCUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  at::Tensor map = at::empty({x.size(0), x.size(1), x.size(2) - 2 * kHalf, x.size(3) - 2 * kHalf}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "ssim_map_cuda", [&] {
    launch_forward<scalar_t, false, true>(xc, yc, data_range, nullptr, map.mutable_data_ptr<scalar_t>(), nullptr);
  });
  return map;
}

at::Tensor ssim_backward_cuda(const at::Tensor& grad_ssim, const at::Tensor& x, const at::Tensor& y,
                              const at::Tensor& partials, double data_range) {
  check_ssim_inputs(x, y, data_range);
  check_cuda_pair(x, data_range);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = H - 2 * kHalf, Wo = W - 2 * kHalf;
  TORCH_CHECK(grad_ssim.dim() == 1 && grad_ssim.size(0) == B, "ssim_backward: grad_ssim must have shape (B,)");
  TORCH_CHECK(partials.sizes() == at::IntArrayRef({B, C, 3, Ho, Wo}),
              "ssim_backward: partials must come from ssim_forward(..., need_grad=True)");
  TORCH_CHECK(partials.scalar_type() == x.scalar_type(), "ssim_backward: partials dtype mismatch");
  TORCH_CHECK(grad_ssim.device() == x.device() && partials.device() == x.device(),
              "ssim_backward: tensors on different devices");
  const at::cuda::OptionalCUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), yc = y.contiguous(), pc = partials.contiguous();
  const at::Tensor gc = grad_ssim.to(x.scalar_type()).contiguous();
  at::Tensor dx = at::empty({B, C, H, W}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "ssim_backward_cuda", [&] {
    using T = scalar_t;
    constexpr int TH = TileH<T>::value;
    Taps<T> taps;
    gaussian_taps(taps.g);
    const dim3 grid(unsigned((W + kTW - 1) / kTW), unsigned((H + TH - 1) / TH), unsigned(B * C));
    const dim3 block(kTW, kBY);
    ssim_bwd_kernel<T><<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(
        gc.const_data_ptr<T>(), xc.const_data_ptr<T>(), yc.const_data_ptr<T>(), pc.const_data_ptr<T>(),
        int(C), int(H), int(W), taps, T(data_range) / T(2), 1.0 / (double(C) * double(Ho) * double(Wo)),
        dx.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

TORCH_LIBRARY_IMPL(fawkes_fast, CUDA, m) {
  m.impl("ssim_forward", &ssim_forward_cuda);
  m.impl("ssim_backward", &ssim_backward_cuda);
  m.impl("ssim_map", &ssim_map_cuda);
}

}  // namespace fawkes_fast
