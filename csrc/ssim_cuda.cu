// CUDA SSIM (tf.image.ssim conventions). The forward is one tiled shared-memory kernel (5 blurred
// moments -> SSIM -> per-block sums) and a deterministic per-image reduction; it stores nothing
// for the backward. The backward kernel recomputes the 3 partial maps it needs for its tile and
// applies the transposed separable Gaussian: it reads x and y and writes dx, where storing the
// partials would cost 3 maps written and read back. The tile phases live in ssim_tile.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fawkes_fast.h"
#include "ssim_tile.h"

namespace fawkes_fast {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct Taps {
  T g[kWin];
};

template <typename T>
Taps<T> make_taps() {
  Taps<T> t;
  gaussian_taps(t.g);
  return t;
}

template <typename T>
__device__ __forceinline__ T block_sum(T v, T* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  T s = 0;
  if (threadIdx.x == 0) {
    for (int i = 0; i < kThreads / 32; ++i) s += red[i];
  }
  return s;
}

// grid: (ceil(Wo/W), ceil(Ho/H), B*C); one block: an H x W tile of the SSIM map of one plane.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    ssim_fwd_kernel(const T* __restrict__ x, const T* __restrict__ y, int H, int W, Taps<T> taps,
                    SsimConsts<T> k, T* __restrict__ block_sums) {
  using L = tile::FwdLayout<T>;
  __shared__ T buf[L::kElems];
  __shared__ T red[kThreads / 32];
  T* sx = buf;
  T* sy = buf + L::kIn;
  T* mom = buf + 2 * L::kIn;
  const int64_t plane = blockIdx.z;
  const int oy0 = blockIdx.y * L::H, ox0 = blockIdx.x * L::W;
  const int tid = threadIdx.x;
  tile::load_centred(x + plane * H * W, y + plane * H * W, H, W, oy0, ox0, L::IH, L::IW, k.c, sx,
                     sy, tid, kThreads);
  __syncthreads();
  tile::horizontal_moments(sx, sy, L::IW, L::IH, L::W, taps.g, mom, tid, kThreads);
  __syncthreads();
  const T local = tile::forward_sum(mom, H - 2 * kHalf, W - 2 * kHalf, oy0, ox0, taps.g, k, tid,
                                    kThreads);
  const T s = block_sum(local, red);
  if (tid == 0) block_sums[plane * (gridDim.x * gridDim.y) + blockIdx.y * gridDim.x + blockIdx.x] = s;
}

// One block per image: out[b] = sum(block_sums[b, :]) / n, summed in fp64 (deterministic).
template <typename T>
__global__ void ssim_finalize_kernel(const T* __restrict__ block_sums, int64_t per_image, double n,
                                     T* __restrict__ out) {
  __shared__ double red[kThreads];
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

// grid: (ceil(W/Wt), ceil(H/Ht), B*C); one block: an Ht x Wt tile of dx of one plane.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    ssim_bwd_kernel(const T* __restrict__ grad, const T* __restrict__ x, const T* __restrict__ y,
                    int C, int H, int W, Taps<T> taps, SsimConsts<T> k, double inv_n,
                    T* __restrict__ dx) {
  using L = tile::BwdLayout<T>;
  __shared__ T buf[L::kElems];
  T* sx = buf;
  T* sy = buf + L::kIn;
  T* mom = buf + 2 * L::kIn;
  T* part = buf;  // reuses x, y (dead after the horizontal pass)
  T* vt = mom;    // reuses the moments (dead after the partials)
  const int64_t plane = blockIdx.z;
  const int iy0 = blockIdx.y * L::H, ix0 = blockIdx.x * L::W;
  const int tid = threadIdx.x;
  const T* xp = x + plane * H * W;
  const T* yp = y + plane * H * W;
  tile::load_centred(xp, yp, H, W, iy0 - 2 * kHalf, ix0 - 2 * kHalf, L::IH, L::IW, k.c, sx, sy,
                     tid, kThreads);
  __syncthreads();
  tile::horizontal_moments(sx, sy, L::IW, L::IH, L::PW, taps.g, mom, tid, kThreads);
  __syncthreads();
  tile::backward_partials(mom, H - 2 * kHalf, W - 2 * kHalf, iy0, ix0, taps.g, k, part, tid,
                          kThreads);
  __syncthreads();
  tile::backward_vertical(part, taps.g, vt, tid, kThreads);
  __syncthreads();
  const T scale = T(double(grad[plane / C]) * inv_n);
  tile::backward_dx(vt, xp, yp, H, W, iy0, ix0, taps.g, k.c, scale, dx + plane * H * W, tid,
                    kThreads);
}

void check_cuda(const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "fawkes_fast ssim (CUDA): expected CUDA tensors");
  TORCH_CHECK_VALUE(x.size(0) * x.size(1) <= 65535, "fawkes_fast ssim (CUDA): B*C must be <= 65535");
  TORCH_CHECK_VALUE(x.size(2) * x.size(3) < (int64_t(1) << 31), "fawkes_fast ssim (CUDA): image too large");
}

template <typename T>
void launch_forward(const at::Tensor& xc, const at::Tensor& yc, double data_range, at::Tensor& out) {
  using L = tile::FwdLayout<T>;
  const int64_t B = xc.size(0), C = xc.size(1);
  const int H = int(xc.size(2)), W = int(xc.size(3));
  const int Ho = H - 2 * kHalf, Wo = W - 2 * kHalf;
  const dim3 grid((Wo + L::W - 1) / L::W, (Ho + L::H - 1) / L::H, unsigned(B * C));
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor sums = at::empty({B, C * int64_t(grid.x) * grid.y}, xc.options());
  ssim_fwd_kernel<T><<<grid, kThreads, 0, stream>>>(xc.const_data_ptr<T>(), yc.const_data_ptr<T>(),
                                                    H, W, make_taps<T>(), ssim_consts<T>(data_range),
                                                    sums.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  ssim_finalize_kernel<T><<<unsigned(B), kThreads, 0, stream>>>(
      sums.const_data_ptr<T>(), sums.size(1), double(C) * double(Ho) * double(Wo),
      out.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> ssim_forward_cuda(const at::Tensor& x, const at::Tensor& y,
                                                     double data_range, bool need_grad) {
  check_ssim_inputs(x, y, data_range);
  check_cuda(x);
  const at::cuda::OptionalCUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  at::Tensor out = at::empty({x.size(0)}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "ssim_forward_cuda",
                             [&] { launch_forward<scalar_t>(xc, yc, data_range, out); });
  return {out, at::empty({0}, xc.options())};  // the backward recomputes what it needs
}

at::Tensor ssim_backward_cuda(const at::Tensor& grad_ssim, const at::Tensor& x, const at::Tensor& y,
                              const at::Tensor& saved, double data_range) {
  check_ssim_inputs(x, y, data_range);
  check_ssim_backward_inputs(grad_ssim, x, saved);
  check_cuda(x);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const at::cuda::OptionalCUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  const at::Tensor gc = grad_ssim.to(x.scalar_type()).contiguous();
  at::Tensor dx = at::empty({B, C, H, W}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "ssim_backward_cuda", [&] {
    using L = tile::BwdLayout<scalar_t>;
    const dim3 grid(unsigned((W + L::W - 1) / L::W), unsigned((H + L::H - 1) / L::H), unsigned(B * C));
    const double inv_n = 1.0 / (double(C) * double(H - 2 * kHalf) * double(W - 2 * kHalf));
    ssim_bwd_kernel<scalar_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        gc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), yc.const_data_ptr<scalar_t>(),
        int(C), int(H), int(W), make_taps<scalar_t>(), ssim_consts<scalar_t>(data_range), inv_n,
        dx.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

TORCH_LIBRARY_IMPL(fawkes_fast, CUDA, m) {
  m.impl("ssim_forward", &ssim_forward_cuda);
  m.impl("ssim_backward", &ssim_backward_cuda);
}

}  // namespace fawkes_fast
