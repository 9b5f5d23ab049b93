// The LayerNorm tail shared by the fused kernels: given a row already written to `row` and its sum, normalize
// it in place (two-pass variance on the L1-resident row, as torch's layer_norm).
#pragma once

#include <cmath>
#include <cstdint>

namespace costeff_native {

inline void normalize_row(float* row, int64_t h, float sum, const float* weight, const float* bias, float eps) {
  const float mean = sum / static_cast<float>(h);
  float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
  for (int64_t j = 0; j < h; ++j) {
    const float centered = row[j] - mean;
    squares += centered * centered;
  }
  const float rstd = 1.0f / std::sqrt(squares / static_cast<float>(h) + eps);
#pragma omp simd
  for (int64_t j = 0; j < h; ++j) row[j] = (row[j] - mean) * rstd * weight[j] + bias[j];
}

}  // namespace costeff_native
