// Compaction gather: copy the token spans of the kept rows of a packed [T, H] buffer into a new buffer, one
// memcpy per row (torch needs a per-token boolean mask, nonzero and an index gather).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "checks.h"

namespace costeff_native {

// Copy the token spans of rows kept[0 .. count) of src (row r: tokens cu[r] .. cu[r + 1] - 1) one after the
// other into dst, span i starting at token dst_cu[i]; spans are split over threads with at::parallel_for.
static void copy_spans(const float* src, const int64_t* cu, const int64_t* kept, const int64_t* dst_cu,
                       int64_t count, int64_t h, float* dst) {
  at::parallel_for(0, count, 4, [=](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = kept[i];
      std::memcpy(dst + dst_cu[i] * h, src + cu[r] * h, sizeof(float) * (cu[r + 1] - cu[r]) * h);
    }
  });
}

// hidden [T, H] fp32 contiguous, cu_seqlens [B + 1] int64 CPU, keep [B] bool CPU. Returns [T', H].
at::Tensor compact_tokens(const at::Tensor& hidden, const at::Tensor& cu_seqlens, const at::Tensor& keep) {
  check_float(hidden, 2, "compact_tokens", "hidden");
  check_varlen(cu_seqlens, hidden.size(0), hidden.size(0), "compact_tokens");
  const int64_t rows = cu_seqlens.numel() - 1;
  TORCH_CHECK(keep.device().is_cpu() && keep.scalar_type() == at::kBool && keep.dim() == 1 &&
                  keep.is_contiguous() && keep.numel() == rows,
              "compact_tokens: keep must be a contiguous bool CPU vector with one entry per row");
  const int64_t* cu = cu_seqlens.data_ptr<int64_t>();
  const bool* kp = keep.data_ptr<bool>();
  std::vector<int64_t> kept, offset{0};
  for (int64_t r = 0; r < rows; ++r) {
    if (kp[r]) {
      kept.push_back(r);
      offset.push_back(offset.back() + cu[r + 1] - cu[r]);
    }
  }
  const int64_t h = hidden.size(1);
  at::Tensor out = at::empty({offset.back(), h}, hidden.options());
  copy_spans(hidden.data_ptr<float>(), cu, kept.data(), offset.data(), static_cast<int64_t>(kept.size()), h,
             out.data_ptr<float>());
  return out;
}

}  // namespace costeff_native

TORCH_LIBRARY_FRAGMENT(costeff_native, m) {
  m.def("compact_tokens(Tensor hidden, Tensor cu_seqlens, Tensor keep) -> Tensor", &costeff_native::compact_tokens);
}
