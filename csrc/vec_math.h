// Vectorizable float math shared by the native kernels: exp and erf from arithmetic only, so that GCC turns
// loops over them into SIMD code (no libm calls). Sources: Cephes expf (range reduction to 2^n * e^r and a
// degree-6 polynomial, relative error < 2e-7) and Abramowitz & Stegun 7.1.26 for erf (absolute error
// < 1.5e-7).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace costeff_native {

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

// erf(x), absolute error < 1.5e-7.
inline float erf_approx(float x) {
  const float z = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.3275911f * z);
  float poly = 1.061405429f;
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  const float y = 1.0f - poly * t * exp_approx(-z * z);
  return std::copysign(y, x);
}

}  // namespace costeff_native
