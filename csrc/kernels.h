// Pointer-level entry points shared between the kernel files (the registered ops check their tensors and
// call these; encoder_layer.cpp calls them on tiles).
#pragma once

#include <cstdint>

namespace costeff_native {

// Attention of rows [0, rows) whose tokens start at cu[0]: qkv and out point at token cu[0] (strides 3 * h * d
// and h * d); bias is the [3 * h * d] QKV bias. Work is split over (row, head) with at::parallel_for.
void attend_rows(const float* qkv, const float* bias, const int64_t* cu, int64_t rows, int64_t num_heads,
                 int64_t head_size, int64_t max_seqlen, float scale, float* out);

// out[t] = LayerNorm(x[t] + bias + residual[t]) * weight + norm_bias for rows [T, h]; out may equal x.
void bias_residual_layernorm_rows(const float* x, const float* bias, const float* residual, const float* weight,
                                  const float* norm_bias, int64_t rows, int64_t h, float eps, float* out);

// out[r] = mean of x's tokens cu[r] .. cu[r + 1] - 1 for rows r in [r0, r1) (x [T, h], out [B, h]).
void mean_rows(const float* x, const int64_t* cu, int64_t r0, int64_t r1, int64_t h, float* out);

}  // namespace costeff_native
