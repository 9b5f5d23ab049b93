// Mean of each packed row's token vectors ([T, H] -> [B, H]) by contiguous spans (torch needs a per-token row
// index and a scatter-add over all tokens); feeds exits that pool by mean.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "checks.h"
#include "kernels.h"

namespace costeff_native {

void mean_rows(const float* x, const int64_t* cu, int64_t r0, int64_t r1, int64_t h, float* out) {
  for (int64_t r = r0; r < r1; ++r) {
    float* o = out + r * h;
    std::fill(o, o + h, 0.0f);
    for (int64_t t = cu[r]; t < cu[r + 1]; ++t) {
      const float* row = x + t * h;
#pragma omp simd
      for (int64_t j = 0; j < h; ++j) o[j] += row[j];
    }
    const float inv = 1.0f / static_cast<float>(cu[r + 1] - cu[r]);
#pragma omp simd
    for (int64_t j = 0; j < h; ++j) o[j] *= inv;
  }
}

// hidden [T, H] fp32 contiguous, cu_seqlens [B + 1] int64 CPU (rows of >= 1 token). Returns [B, H] fp32.
at::Tensor segment_mean(const at::Tensor& hidden, const at::Tensor& cu_seqlens) {
  check_float(hidden, 2, "segment_mean", "hidden");
  check_varlen(cu_seqlens, hidden.size(0), hidden.size(0), "segment_mean");
  const int64_t rows = cu_seqlens.numel() - 1, h = hidden.size(1);
  const int64_t* cu = cu_seqlens.data_ptr<int64_t>();
  at::Tensor out = at::empty({rows, h}, hidden.options());
  const float* src = hidden.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, rows, 4, [=](int64_t begin, int64_t end) { mean_rows(src, cu, begin, end, h, dst); });
  return out;
}

}  // namespace costeff_native

TORCH_LIBRARY_FRAGMENT(costeff_native, m) {
  m.def("segment_mean(Tensor hidden, Tensor cu_seqlens) -> Tensor", &costeff_native::segment_mean);
}
