// CUDA fused tanh-space Adam step (see tanh_adam_cpu.cpp for the math). Grid: (chunks, images);
// one thread computes the per-image bias corrections (fp64) into shared memory, then the block
// streams its chunk with float4 loads/stores when the image's slice is 16-byte aligned.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "fawkes_fast.h"

namespace fawkes_fast {
namespace {

constexpr int kThreads = 256;

struct Consts {
  float lo, rng, half_rng, omb1, b2, omb2, bc2s, neg_step_size, eps, s2;
};

__device__ __forceinline__ void adam_elem(float& w, float& m, float& v, float& x, float gi,
                                          const Consts& k) {
  const float t = tanhf(w);
  const float g = (gi * k.half_rng) * (1.0f - t * t);
  m = m + k.omb1 * (g - m);
  v = v * k.b2 + (k.omb2 * g) * g;
  const float denom = sqrtf(v) / k.bc2s + k.eps;
  w = w + k.neg_step_size * (m / denom);
  x = (k.rng * (tanhf(w) + 1.0f)) / 2.0f + k.lo;
}

__global__ void __launch_bounds__(kThreads)
    tanh_adam_kernel(float* __restrict__ w, float* __restrict__ m, float* __restrict__ v,
                     float* __restrict__ x, const float* __restrict__ gx,
                     const float* __restrict__ g2, const float* __restrict__ step,
                     const float* __restrict__ lr, const float* __restrict__ scale2, int64_t B,
                     int64_t per, float lo, float hi, double beta1, double beta2, float eps) {
  __shared__ Consts sk;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const float lrb = lr[b];
    if (lrb == 0.0f) continue;  // frozen image (uniform across the block)
    if (threadIdx.x == 0) {
      const double st = double(step[b]);
      const double bc1 = 1.0 - pow(beta1, st);
      const double bc2 = 1.0 - pow(beta2, st);
      sk.lo = lo;
      sk.rng = hi - lo;
      sk.half_rng = (hi - lo) * 0.5f;
      sk.omb1 = float(1.0 - beta1);
      sk.b2 = float(beta2);
      sk.omb2 = float(1.0 - beta2);
      sk.bc2s = float(sqrt(bc2));
      sk.neg_step_size = float(-(double(lrb) / bc1));
      sk.eps = eps;
      sk.s2 = scale2 != nullptr ? scale2[b] : 0.0f;
    }
    __syncthreads();
    const Consts k = sk;
    __syncthreads();  // sk is rewritten for the next image
    const int64_t base = b * per;
    const int64_t stride = int64_t(gridDim.x) * kThreads;
    const bool vec4 = (per % 4 == 0) &&
                      ((reinterpret_cast<uintptr_t>(w + base) | reinterpret_cast<uintptr_t>(m + base) |
                        reinterpret_cast<uintptr_t>(v + base) | reinterpret_cast<uintptr_t>(x + base) |
                        reinterpret_cast<uintptr_t>(gx + base) |
                        (g2 ? reinterpret_cast<uintptr_t>(g2 + base) : 0)) % 16 == 0);
    if (vec4) {
      const int64_t n4 = per / 4;
      for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n4; i += stride) {
        float4 wv = reinterpret_cast<const float4*>(w + base)[i];
        float4 mv = reinterpret_cast<const float4*>(m + base)[i];
        float4 vv = reinterpret_cast<const float4*>(v + base)[i];
        float4 gv = reinterpret_cast<const float4*>(gx + base)[i];
        if (g2 != nullptr) {
          const float4 g2v = reinterpret_cast<const float4*>(g2 + base)[i];
          gv.x += k.s2 * g2v.x;
          gv.y += k.s2 * g2v.y;
          gv.z += k.s2 * g2v.z;
          gv.w += k.s2 * g2v.w;
        }
        float4 xv;
        adam_elem(wv.x, mv.x, vv.x, xv.x, gv.x, k);
        adam_elem(wv.y, mv.y, vv.y, xv.y, gv.y, k);
        adam_elem(wv.z, mv.z, vv.z, xv.z, gv.z, k);
        adam_elem(wv.w, mv.w, vv.w, xv.w, gv.w, k);
        reinterpret_cast<float4*>(w + base)[i] = wv;
        reinterpret_cast<float4*>(m + base)[i] = mv;
        reinterpret_cast<float4*>(v + base)[i] = vv;
        reinterpret_cast<float4*>(x + base)[i] = xv;
      }
    } else {
      for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < per; i += stride) {
        float wv = w[base + i], mv = m[base + i], vv = v[base + i], xv;
        float gi = gx[base + i];
        if (g2 != nullptr) gi += k.s2 * g2[base + i];
        adam_elem(wv, mv, vv, xv, gi, k);
        w[base + i] = wv;
        m[base + i] = mv;
        v[base + i] = vv;
        x[base + i] = xv;
      }
    }
  }
}

}  // namespace

void tanh_adam_step_cuda(at::Tensor& w, at::Tensor& m, at::Tensor& v, at::Tensor& x,
                         const at::Tensor& grad_x, const at::Tensor& step, const at::Tensor& lr,
                         double lo, double hi, double beta1, double beta2, double eps,
                         const std::optional<at::Tensor>& grad2,
                         const std::optional<at::Tensor>& scale2) {
  check_adam_inputs(w, m, v, x, grad_x, step, lr, lo, hi, grad2, scale2);
  TORCH_CHECK(w.is_cuda(), "tanh_adam_step_cuda: expected CUDA tensors");
  const at::cuda::OptionalCUDAGuard guard(w.device());
  const int64_t B = w.size(0);
  const int64_t per = w.numel() / B;
  if (per == 0) return;
  const at::Tensor stepc = step.contiguous(), lrc = lr.contiguous();
  const at::Tensor s2c = scale2.has_value() ? scale2->contiguous() : at::Tensor();
  // Enough blocks to fill the GPU (~4 waves of 8 blocks/SM), split across images.
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, w.get_device()));
  const int64_t want = std::max<int64_t>(1, (int64_t(sms) * 32 + B - 1) / B);
  const int64_t need = (per / 4 + kThreads - 1) / kThreads + 1;
  const unsigned gx = unsigned(std::max<int64_t>(1, std::min<int64_t>(want, need)));
  const unsigned gy = unsigned(std::min<int64_t>(B, 65535));
  tanh_adam_kernel<<<dim3(gx, gy), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      w.mutable_data_ptr<float>(), m.mutable_data_ptr<float>(), v.mutable_data_ptr<float>(),
      x.mutable_data_ptr<float>(), grad_x.const_data_ptr<float>(),
      grad2.has_value() ? grad2->const_data_ptr<float>() : nullptr, stepc.const_data_ptr<float>(),
      lrc.const_data_ptr<float>(), scale2.has_value() ? s2c.const_data_ptr<float>() : nullptr, B, per,
      float(lo), float(hi), beta1, beta2, float(eps));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

TORCH_LIBRARY_IMPL(fawkes_fast, CUDA, m) {
  m.impl("tanh_adam_step", &tanh_adam_step_cuda);
}

}  // namespace fawkes_fast
