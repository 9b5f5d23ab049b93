// Vectorizable float exp from arithmetic only, so that GCC turns loops over it into SIMD code (no libm call).
// Source: Cephes expf (range reduction to 2^n * e^r and a degree-6 polynomial, relative error < 2e-7).
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

}  // namespace costeff_native
