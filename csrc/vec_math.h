// SIMD helpers shared by the kernels: a float vector of the widest width -march=native offers (GCC vector
// extensions: AVX-512 or AVX2), unaligned load/store, tree horizontal sum and max, and a float exp from
// arithmetic only, so that GCC turns loops over it into SIMD code (no libm call). Source of the exp: Cephes
// expf (range reduction to 2^n * e^r and a degree-6 polynomial, relative error < 2e-7).
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace costeff_native {

#if defined(__AVX512F__)
#define COSTEFF_VEC 16
#else
#define COSTEFF_VEC 8
#endif
constexpr int64_t kVec = COSTEFF_VEC;
typedef float vfloat __attribute__((vector_size(COSTEFF_VEC * sizeof(float))));

inline vfloat load(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store(float* p, vfloat v) { std::memcpy(p, &v, sizeof(v)); }

typedef float vfloat4 __attribute__((vector_size(4 * sizeof(float))));

// Horizontal sum and max of a vector by halving (a tree, not the serial order GCC keeps otherwise).
inline vfloat4 quarter_sum(vfloat v) {
#if COSTEFF_VEC == 16
  const vfloat4 a = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
  const vfloat4 b = __builtin_shufflevector(v, v, 8, 9, 10, 11) + __builtin_shufflevector(v, v, 12, 13, 14, 15);
  return a + b;
#else
  return __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
#endif
}

inline float hsum(vfloat v) {
  const vfloat4 q = quarter_sum(v);
  return (q[0] + q[2]) + (q[1] + q[3]);
}

inline vfloat4 max4(vfloat4 a, vfloat4 b) { return a > b ? a : b; }

inline float hmax(vfloat v) {
#if COSTEFF_VEC == 16
  const vfloat4 a = max4(__builtin_shufflevector(v, v, 0, 1, 2, 3), __builtin_shufflevector(v, v, 4, 5, 6, 7));
  const vfloat4 b = max4(__builtin_shufflevector(v, v, 8, 9, 10, 11), __builtin_shufflevector(v, v, 12, 13, 14, 15));
  const vfloat4 q = max4(a, b);
#else
  const vfloat4 q = max4(__builtin_shufflevector(v, v, 0, 1, 2, 3), __builtin_shufflevector(v, v, 4, 5, 6, 7));
#endif
  return std::max(std::max(q[0], q[2]), std::max(q[1], q[3]));
}


// e^x for x in [-87, 88] (clamped outside, so e^-inf gives 1.6e-38 instead of 0).
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}

}  // namespace costeff_native
