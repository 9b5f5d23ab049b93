// A whole post-LN encoder layer on packed tokens in one call, tile by tile: groups of consecutive rows of at
// most `tile_tokens` tokens run QKV GEMM -> varlen attention -> W_O GEMM + bias + residual + LayerNorm -> W_1
// GEMM + bias + GELU -> W_2 GEMM + bias + residual + LayerNorm while their activations stay in L2. With more
// than one thread, each thread takes whole tiles (its GEMMs and kernels run single-threaded inside), so narrow
// GEMMs no longer pay a fork/join each and a thread preempted by another process does not stall the rest; a
// single tile runs on the calling thread with multi-threaded ops instead. With `row_mean`, each tile also
// averages its rows' output tokens while they are still in cache (the input of exits that pool by mean),
// instead of a second pass over the whole output.
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <tuple>
#include <utility>
#include <vector>

#include "checks.h"
#include "kernels.h"

namespace costeff_native {

// Row ranges [r0, r1) of consecutive rows holding at most tile_tokens tokens (a longer row is a tile alone).
static std::vector<std::pair<int64_t, int64_t>> tile_rows(const int64_t* cu, int64_t rows, int64_t tile_tokens) {
  std::vector<std::pair<int64_t, int64_t>> ranges;
  int64_t first = 0;
  for (int64_t r = 1; r <= rows; ++r) {
    if (r == rows || cu[r + 1] - cu[first] > tile_tokens) {
      ranges.emplace_back(first, r);
      first = r;
    }
  }
  return ranges;
}

// hidden [T, H]; weights input-major as in costeff_fast.packing.PackedLayer. Returns the layer output [T, H]
// and, with row_mean, each row's mean output token [B, H] (else an empty [0, H]).
std::tuple<at::Tensor, at::Tensor> encoder_layer(const at::Tensor& hidden, const at::Tensor& cu_seqlens, int64_t max_seqlen,
                         int64_t num_heads, int64_t head_size, const at::Tensor& qkv_weight,
                         const at::Tensor& qkv_bias, const at::Tensor& attention_output_weight,
                         const at::Tensor& attention_output_bias, const at::Tensor& attention_norm_weight,
                         const at::Tensor& attention_norm_bias, const at::Tensor& intermediate_weight,
                         const at::Tensor& intermediate_bias, const at::Tensor& output_weight,
                         const at::Tensor& output_bias, const at::Tensor& output_norm_weight,
                         const at::Tensor& output_norm_bias, double eps, int64_t tile_tokens,
                         bool row_mean) {
  const char* op = "encoder_layer";
  check_float(hidden, 2, op, "hidden");
  TORCH_CHECK(num_heads >= 1 && head_size >= 1 && tile_tokens >= 1,
              "encoder_layer: num_heads, head_size and tile_tokens must be >= 1");
  const int64_t tokens = hidden.size(0), h = hidden.size(1), width = num_heads * head_size;
  check_matrix(intermediate_weight, h, -1, op, "intermediate_weight");
  const int64_t ffn = intermediate_weight.size(1);
  check_matrix(qkv_weight, h, 3 * width, op, "qkv_weight");
  check_vector(qkv_bias, 3 * width, op, "qkv_bias");
  check_matrix(attention_output_weight, width, h, op, "attention_output_weight");
  check_vector(attention_output_bias, h, op, "attention_output_bias");
  check_vector(attention_norm_weight, h, op, "attention_norm_weight");
  check_vector(attention_norm_bias, h, op, "attention_norm_bias");
  check_vector(intermediate_bias, ffn, op, "intermediate_bias");
  check_matrix(output_weight, ffn, h, op, "output_weight");
  check_vector(output_bias, h, op, "output_bias");
  check_vector(output_norm_weight, h, op, "output_norm_weight");
  check_vector(output_norm_bias, h, op, "output_norm_bias");
  check_varlen(cu_seqlens, tokens, max_seqlen, op);
  const int64_t* cu = cu_seqlens.data_ptr<int64_t>();
  const auto ranges = tile_rows(cu, cu_seqlens.numel() - 1, tile_tokens);
  const int64_t rows = cu_seqlens.numel() - 1;
  at::Tensor out = at::empty({tokens, h}, hidden.options());
  at::Tensor means = at::empty({row_mean ? rows : 0, h}, hidden.options());
  float* out_ptr = out.data_ptr<float>();
  float* means_ptr = row_mean ? means.data_ptr<float>() : nullptr;
  const float feps = static_cast<float>(eps);

  const float scale = 1.0f / std::sqrt(static_cast<float>(head_size));
  auto run_tile = [&](int64_t i) {
    const int64_t r0 = ranges[i].first, r1 = ranges[i].second;
    const int64_t t0 = cu[r0], count = cu[r1] - cu[r0];
    const at::Tensor x = hidden.narrow(0, t0, count);
    const at::Tensor qkv = at::mm(x, qkv_weight);
    at::Tensor context = at::empty({count, width}, hidden.options());
    attend_rows(qkv.data_ptr<float>(), qkv_bias.data_ptr<float>(), cu + r0, r1 - r0, num_heads, head_size,
                max_seqlen, scale, context.data_ptr<float>());
    at::Tensor attended = at::mm(context, attention_output_weight);
    float* a = attended.data_ptr<float>();
    bias_residual_layernorm_rows(a, attention_output_bias.data_ptr<float>(), x.data_ptr<float>(),
                                 attention_norm_weight.data_ptr<float>(), attention_norm_bias.data_ptr<float>(),
                                 count, h, feps, a);
    at::Tensor inter = at::addmm(intermediate_bias, attended, intermediate_weight);
    at::gelu_(inter);
    const at::Tensor ffn_out = at::mm(inter, output_weight);
    bias_residual_layernorm_rows(ffn_out.data_ptr<float>(), output_bias.data_ptr<float>(), a,
                                 output_norm_weight.data_ptr<float>(), output_norm_bias.data_ptr<float>(), count, h,
                                 feps, out_ptr + t0 * h);
    if (means_ptr != nullptr) mean_rows(out_ptr, cu, r0, r1, h, means_ptr);  // the tile is still in cache
  };
  const int64_t num_tiles = static_cast<int64_t>(ranges.size());
  if (num_tiles == 1 || at::get_num_threads() == 1) {
    for (int64_t i = 0; i < num_tiles; ++i) run_tile(i);
    return {out, means};
  }
  // One worker per thread, each taking the next tile from a shared counter.
  const at::ThreadLocalState state;  // inference mode, grad mode ... for the worker threads
  std::atomic<int64_t> next{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    at::ThreadLocalStateGuard guard(state);
    for (int64_t i = next++; i < num_tiles; i = next++) run_tile(i);
  });
  return {out, means};
}

}  // namespace costeff_native

TORCH_LIBRARY_FRAGMENT(costeff_native, m) {
  m.def("encoder_layer(Tensor hidden, Tensor cu_seqlens, int max_seqlen, int num_heads, int head_size, "
        "Tensor qkv_weight, Tensor qkv_bias, Tensor attention_output_weight, Tensor attention_output_bias, "
        "Tensor attention_norm_weight, Tensor attention_norm_bias, Tensor intermediate_weight, "
        "Tensor intermediate_bias, Tensor output_weight, Tensor output_bias, Tensor output_norm_weight, "
        "Tensor output_norm_bias, float eps, int tile_tokens, bool row_mean=False) -> (Tensor, Tensor)",
        &costeff_native::encoder_layer);
}
