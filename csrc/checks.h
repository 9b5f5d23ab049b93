// Input checks shared by the registered ops: each failure raises a RuntimeError naming the op and argument.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace costeff_native {

// A contiguous float32 CPU tensor of `dim` dimensions.
inline void check_float(const at::Tensor& t, int64_t dim, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == dim && t.is_contiguous(), op, ": ",
              name, " must be a contiguous ", dim, "-D float32 CPU tensor");
}

// A contiguous float32 CPU vector of `size` values.
inline void check_vector(const at::Tensor& t, int64_t size, const char* op, const char* name) {
  check_float(t, 1, op, name);
  TORCH_CHECK(t.size(0) == size, op, ": ", name, " must have ", size, " values, got ", t.size(0));
}

// A contiguous float32 CPU matrix [rows, cols]; a negative size accepts any.
inline void check_matrix(const at::Tensor& t, int64_t rows, int64_t cols, const char* op, const char* name) {
  check_float(t, 2, op, name);
  TORCH_CHECK((rows < 0 || t.size(0) == rows) && (cols < 0 || t.size(1) == cols), op, ": ", name, " must be [",
              rows, ", ", cols, "], got [", t.size(0), ", ", t.size(1), "]");
}

// cu_seqlens: a contiguous int64 CPU vector from 0 to `tokens` whose rows hold 1..max_seqlen tokens.
inline void check_varlen(const at::Tensor& cu_seqlens, int64_t tokens, int64_t max_seqlen, const char* op) {
  TORCH_CHECK(cu_seqlens.device().is_cpu() && cu_seqlens.scalar_type() == at::kLong && cu_seqlens.dim() == 1 &&
                  cu_seqlens.is_contiguous() && cu_seqlens.numel() >= 1,
              op, ": cu_seqlens must be a contiguous 1-D int64 CPU tensor");
  const int64_t rows = cu_seqlens.numel() - 1;
  const int64_t* cu = cu_seqlens.data_ptr<int64_t>();
  TORCH_CHECK(cu[0] == 0 && cu[rows] == tokens, op, ": cu_seqlens must run from 0 to T = ", tokens);
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(cu[r + 1] > cu[r] && cu[r + 1] - cu[r] <= max_seqlen, op, ": row lengths must lie in [1, ",
                max_seqlen, "]");
  }
}

}  // namespace costeff_native
