// LayerNorm rows shared by the fused kernels. `sum3_into` writes the sum of three rows (GEMM output + bias +
// residual, or word + position + type embeddings) and returns its sum; `normalize_row` then normalizes the row
// in place (two-pass variance on the L1-resident row, as torch's layer_norm). Both keep four independent
// vector accumulators and reduce them as a tree: one running sum would serialize every add on the FP latency.
#pragma once

#include <cmath>
#include <cstdint>

#include "vec_math.h"

namespace costeff_native {

// row = a + b + c elementwise (h floats); returns the sum of row. row may alias a.
inline float sum3_into(float* row, const float* a, const float* b, const float* c, int64_t h) {
  vfloat acc[4] = {};
  int64_t j = 0;
  for (; j + 4 * kVec <= h; j += 4 * kVec) {
    for (int u = 0; u < 4; ++u) {
      const int64_t k = j + u * kVec;
      const vfloat v = load(a + k) + load(b + k) + load(c + k);
      store(row + k, v);
      acc[u] += v;
    }
  }
  float sum = hsum((acc[0] + acc[1]) + (acc[2] + acc[3]));
  for (; j < h; ++j) {
    row[j] = a[j] + b[j] + c[j];
    sum += row[j];
  }
  return sum;
}

inline void normalize_row(float* row, int64_t h, float sum, const float* weight, const float* bias, float eps) {
  const float mean = sum / static_cast<float>(h);
  vfloat acc[4] = {};
  int64_t j = 0;
  for (; j + 4 * kVec <= h; j += 4 * kVec) {
    for (int u = 0; u < 4; ++u) {
      const vfloat centered = load(row + j + u * kVec) - mean;
      acc[u] += centered * centered;
    }
  }
  float squares = hsum((acc[0] + acc[1]) + (acc[2] + acc[3]));
  for (; j < h; ++j) squares += (row[j] - mean) * (row[j] - mean);
  const float rstd = 1.0f / std::sqrt(squares / static_cast<float>(h) + eps);
#pragma omp simd
  for (int64_t k = 0; k < h; ++k) row[k] = (row[k] - mean) * rstd * weight[k] + bias[k];
}

}  // namespace costeff_native
