// CUDA fused tanh-space Adam step (the math: adam_math.h). Grid: (chunks, images). One thread
// computes the image's bias corrections (fp64) into shared memory; then each thread streams
// kUnroll float4s of w, m, v and grad per iteration, all loads issued before any math, so that
// enough bytes are in flight to approach the memory floor (32 B per element: read w, m, v, grad;
// write w, m, v, x). A scalar loop serves slices that are not 16-byte aligned.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "adam_math.h"
#include "fawkes_fast.h"

namespace fawkes_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 2;

struct CudaMath {
  static __device__ __forceinline__ float tanh(float a) { return tanhf(a); }
  static __device__ __forceinline__ float sqrt(float a) { return sqrtf(a); }
};

__device__ __forceinline__ void adam4(float4& w, float4& m, float4& v, float4& x, const float4& g,
                                      const AdamConsts& k) {
  adam_update<CudaMath>(w.x, m.x, v.x, x.x, g.x, k);
  adam_update<CudaMath>(w.y, m.y, v.y, x.y, g.y, k);
  adam_update<CudaMath>(w.z, m.z, v.z, x.z, g.z, k);
  adam_update<CudaMath>(w.w, m.w, v.w, x.w, g.w, k);
}

// n4 float4s of one image starting at the given pointers (all 16-byte aligned).
__device__ __forceinline__ void stream_vec4(float4* w, float4* m, float4* v, float4* x,
                                            const float4* g, int64_t n4, const AdamConsts& k) {
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i0 = int64_t(blockIdx.x) * kThreads + threadIdx.x; i0 < n4; i0 += kUnroll * stride) {
    float4 wv[kUnroll], mv[kUnroll], vv[kUnroll], gv[kUnroll], xv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + u * stride;
      if (i < n4) {
        wv[u] = w[i];
        mv[u] = m[i];
        vv[u] = v[i];
        gv[u] = g[i];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + u * stride;
      if (i < n4) {
        adam4(wv[u], mv[u], vv[u], xv[u], gv[u], k);
        w[i] = wv[u];
        m[i] = mv[u];
        v[i] = vv[u];
        x[i] = xv[u];
      }
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    tanh_adam_kernel(float* __restrict__ w, float* __restrict__ m, float* __restrict__ v,
                     float* __restrict__ x, const float* __restrict__ gx,
                     const float* __restrict__ step, const float* __restrict__ lr, int64_t B,
                     int64_t per, double lo, double hi, double beta1, double beta2, double eps) {
  __shared__ AdamConsts sk;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const float lrb = lr[b];
    if (lrb == 0.0f) continue;  // frozen image (uniform across the block)
    if (threadIdx.x == 0) sk = adam_consts(lo, hi, beta1, beta2, eps, step[b], lrb);
    __syncthreads();
    const AdamConsts k = sk;
    __syncthreads();  // sk is rewritten for the next image
    const int64_t base = b * per;
    const uintptr_t addr = reinterpret_cast<uintptr_t>(w + base) | reinterpret_cast<uintptr_t>(m + base) |
                           reinterpret_cast<uintptr_t>(v + base) | reinterpret_cast<uintptr_t>(x + base) |
                           reinterpret_cast<uintptr_t>(gx + base);
    if (per % 4 == 0 && addr % 16 == 0) {
      stream_vec4(reinterpret_cast<float4*>(w + base), reinterpret_cast<float4*>(m + base),
                  reinterpret_cast<float4*>(v + base), reinterpret_cast<float4*>(x + base),
                  reinterpret_cast<const float4*>(gx + base), per / 4, k);
      continue;
    }
    const int64_t stride = int64_t(gridDim.x) * kThreads;
    for (int64_t i = base + int64_t(blockIdx.x) * kThreads + threadIdx.x; i < base + per; i += stride) {
      adam_update<CudaMath>(w[i], m[i], v[i], x[i], gx[i], k);
    }
  }
}

}  // namespace

void tanh_adam_step_cuda(at::Tensor& w, at::Tensor& m, at::Tensor& v, at::Tensor& x,
                         const at::Tensor& grad_x, const at::Tensor& step, const at::Tensor& lr,
                         double lo, double hi, double beta1, double beta2, double eps) {
  check_adam_inputs(w, m, v, x, grad_x, step, lr, lo, hi, beta1, beta2, eps);
  TORCH_CHECK(w.is_cuda(), "fawkes_fast tanh_adam_step (CUDA): expected CUDA tensors");
  const at::cuda::OptionalCUDAGuard guard(w.device());
  const int64_t B = w.size(0);
  const int64_t per = w.numel() / B;
  if (per == 0) return;
  const at::Tensor stepc = step.contiguous(), lrc = lr.contiguous();
  // Enough blocks to fill the GPU (~4 waves of 8 blocks/SM), split across images, each thread
  // with at least kUnroll float4s.
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, w.get_device()));
  const int64_t want = std::max<int64_t>(1, (int64_t(sms) * 32 + B - 1) / B);
  const int64_t need = (per / 4 + kUnroll * kThreads - 1) / (kUnroll * kThreads);
  const unsigned gx = unsigned(std::max<int64_t>(1, std::min<int64_t>(want, need)));
  const unsigned gy = unsigned(std::min<int64_t>(B, 65535));
  tanh_adam_kernel<<<dim3(gx, gy), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      w.mutable_data_ptr<float>(), m.mutable_data_ptr<float>(), v.mutable_data_ptr<float>(),
      x.mutable_data_ptr<float>(), grad_x.const_data_ptr<float>(), stepc.const_data_ptr<float>(),
      lrc.const_data_ptr<float>(), B, per, lo, hi, beta1, beta2, eps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

TORCH_LIBRARY_IMPL(fawkes_fast, CUDA, m) {
  m.impl("tanh_adam_step", &tanh_adam_step_cuda);
}

}  // namespace fawkes_fast
