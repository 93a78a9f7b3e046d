// Tiny portable SIMD layer on GCC/Clang vector extensions (32-byte vectors: one AVX register,
// or two SSE registers when compiled without AVX). Used by the CPU kernels only.
#pragma once

#include <cstring>

namespace fawkes_fast {
namespace simd {

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(32)));
  typedef int itype __attribute__((vector_size(32)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(32)));
  typedef long long itype __attribute__((vector_size(32)));
};

template <typename T>
using vec = typename VecOf<T>::type;
template <typename T>
constexpr int kLanes = 32 / sizeof(T);

template <typename T>
inline vec<T> load(const T* p) {
  vec<T> r;
  std::memcpy(&r, p, sizeof(r));
  return r;
}
template <typename T>
inline void store(T* p, const vec<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}
template <typename T>
inline vec<T> bcast(T s) {
  vec<T> r = {};
  return r + s;
}
template <typename T>
inline double hsum(const vec<T>& v) {
  double s = 0.0;
  for (int i = 0; i < kLanes<T>; ++i) s += double(v[i]);
  return s;
}

}  // namespace simd
}  // namespace fawkes_fast
