// CPU matrix product (a @ b, b one matrix or a batch of them) whose every output is summed in one fixed order (k = 0, 1, ..., K-1), however
// many threads run it: threads split the output into blocks, never a sum. BLAS and oneDNN split the
// inner sum among threads for small products (dlib's last stages: 8x8 and smaller maps), so their
// bits follow the thread count (issue #23). Each block is a strip of 16 columns of b, copied once
// into a contiguous buffer, times up to kChunk rows of a, in register tiles of kRows x 32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "fawkes_fast.h"

namespace fawkes_fast {
namespace {

// 16 floats: one AVX-512 register, or two AVX ones where the CPU has no AVX-512
typedef float V __attribute__((vector_size(64)));
constexpr int L = 16;

inline V load(const float* p) {
  V r;
  std::memcpy(&r, p, sizeof(r));
  return r;
}
inline void store(float* p, const V& v) { std::memcpy(p, &v, sizeof(v)); }
constexpr int kCols = 2 * L;    // columns per strip
constexpr int kRows = 6;        // rows per register tile: 12 accumulators
constexpr int64_t kChunk = 48;  // rows per block

// out[r, 0:kCols] = sum_k a[r, k] * strip[k, 0:kCols] for `rows` rows (<= kRows), in order of k
// (the sums live in locals, written out once: a vector store into `acc` could alias the float loads,
// which would keep the compiler from holding the sums in registers)
template <int R>
inline void tile(const float* a, int64_t K, const float* strip, V (&acc)[kRows][2]) {
  V s0[R], s1[R];
  for (int r = 0; r < R; ++r) s0[r] = s1[r] = V{};
  for (int64_t k = 0; k < K; ++k) {
    const V b0 = load(strip + k * kCols), b1 = load(strip + k * kCols + L);
    for (int r = 0; r < R; ++r) {
      const V s = V{} + a[r * K + k];
      s0[r] += s * b0;
      s1[r] += s * b1;
    }
  }
  for (int r = 0; r < R; ++r) {
    acc[r][0] = s0[r];
    acc[r][1] = s1[r];
  }
}

void block(const float* a, const float* b, float* out, int64_t K, int64_t N, int64_t r0, int64_t r1, int64_t n0,
           std::vector<float>& strip) {
  const int64_t width = std::min<int64_t>(kCols, N - n0);
  strip.assign(K * kCols, 0.f);  // the strip, zero-padded to kCols: padded columns are never stored
  for (int64_t k = 0; k < K; ++k) std::copy(b + k * N + n0, b + k * N + n0 + width, strip.data() + k * kCols);
  V acc[kRows][2];
  float row[kCols];
  for (int64_t r = r0; r < r1; r += kRows) {
    const int rows = int(std::min<int64_t>(kRows, r1 - r));
    const float* ar = a + r * K;
    switch (rows) {
      case 6: tile<6>(ar, K, strip.data(), acc); break;
      case 5: tile<5>(ar, K, strip.data(), acc); break;
      case 4: tile<4>(ar, K, strip.data(), acc); break;
      case 3: tile<3>(ar, K, strip.data(), acc); break;
      case 2: tile<2>(ar, K, strip.data(), acc); break;
      default: tile<1>(ar, K, strip.data(), acc); break;
    }
    for (int i = 0; i < rows; ++i) {
      store(row, acc[i][0]);
      store(row + L, acc[i][1]);
      std::copy(row, row + width, out + (r + i) * N + n0);
    }
  }
}

}  // namespace

at::Tensor ordered_mm_cpu(const at::Tensor& a_in, const at::Tensor& b_in) {
  check_ordered_mm_inputs(a_in, b_in);
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const bool batched = b.dim() == 3;
  const int64_t M = a.size(0), K = a.size(1), N = b.size(-1), B = batched ? b.size(0) : 1;
  at::Tensor out = batched ? at::empty({B, M, N}, a.options()) : at::empty({M, N}, a.options());
  if (B == 0 || M == 0 || N == 0) return out;
  const float* pa = a.data_ptr<float>();
  const float* pb = b.data_ptr<float>();
  float* po = out.data_ptr<float>();
  const int64_t chunks = (M + kChunk - 1) / kChunk, strips = (N + kCols - 1) / kCols;
  at::parallel_for(0, B * chunks * strips, 1, [&](int64_t u0, int64_t u1) {
    std::vector<float> strip;
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t i = u / (chunks * strips), c = u / strips % chunks, s = u % strips;
      block(pa, pb + i * K * N, po + i * M * N, K, N, c * kChunk, std::min(M, (c + 1) * kChunk), s * kCols, strip);
    }
  });
  return out;
}

}  // namespace fawkes_fast
