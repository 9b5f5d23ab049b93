// Fused BERT embedding: out[t] = LayerNorm(word[id_t] + position[t - row start] + token_type[type_t]) in one
// pass per token (torch gathers three [T, H] tensors, adds them and normalizes into a fourth).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "checks.h"
#include "layernorm.h"

namespace costeff_native {

// ids: a contiguous int64 CPU vector of `tokens` ids in [0, limit).
static void check_ids(const at::Tensor& ids, int64_t tokens, int64_t limit, const char* name) {
  TORCH_CHECK(ids.device().is_cpu() && ids.scalar_type() == at::kLong && ids.dim() == 1 && ids.is_contiguous() &&
                  ids.numel() == tokens,
              "embedding_layernorm: ", name, " must be a contiguous int64 CPU vector of ", tokens, " ids");
  const int64_t* p = ids.data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    TORCH_CHECK(p[t] >= 0 && p[t] < limit, "embedding_layernorm: ", name, " must lie in [0, ", limit, ")");
  }
}

// input_ids, token_type_ids [T] int64; cu_seqlens [B + 1] int64 (positions restart at 0 in every row);
// word [V, H], position [P, H], token_type [types, H], weight, bias [H] fp32. Returns [T, H] fp32.
at::Tensor embedding_layernorm(const at::Tensor& input_ids, const at::Tensor& token_type_ids,
                               const at::Tensor& cu_seqlens, const at::Tensor& word, const at::Tensor& position,
                               const at::Tensor& token_type, const at::Tensor& weight, const at::Tensor& bias,
                               double eps) {
  const char* op = "embedding_layernorm";
  check_matrix(word, -1, -1, op, "word");
  const int64_t h = word.size(1);
  check_matrix(position, -1, h, op, "position");
  check_matrix(token_type, -1, h, op, "token_type");
  check_vector(weight, h, op, "weight");
  check_vector(bias, h, op, "bias");
  TORCH_CHECK(input_ids.dim() == 1, "embedding_layernorm: input_ids must be 1-D");
  check_varlen(cu_seqlens, input_ids.numel(), position.size(0), op);
  const int64_t rows = cu_seqlens.numel() - 1, tokens = input_ids.numel();
  const int64_t* cu = cu_seqlens.data_ptr<int64_t>();
  check_ids(input_ids, tokens, word.size(0), "input_ids");
  check_ids(token_type_ids, tokens, token_type.size(0), "token_type_ids");
  at::Tensor out = at::empty({tokens, h}, word.options());
  const int64_t* ids = input_ids.data_ptr<int64_t>();
  const int64_t* types = token_type_ids.data_ptr<int64_t>();
  const float* wp = word.data_ptr<float>();
  const float* pp = position.data_ptr<float>();
  const float* tp = token_type.data_ptr<float>();
  const float* g = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const float feps = static_cast<float>(eps);
  at::parallel_for(0, rows, 4, [=](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t t = cu[r]; t < cu[r + 1]; ++t) {
        const float* wr = wp + ids[t] * h;
        const float* pr = pp + (t - cu[r]) * h;
        const float* tr = tp + types[t] * h;
        float* o = dst + t * h;
        const float sum = sum3_into(o, wr, pr, tr, h);
        normalize_row(o, h, sum, g, b, feps);
      }
    }
  });
  return out;
}

}  // namespace costeff_native

TORCH_LIBRARY_FRAGMENT(costeff_native, m) {
  m.def("embedding_layernorm(Tensor input_ids, Tensor token_type_ids, Tensor cu_seqlens, Tensor word, "
        "Tensor position, Tensor token_type, Tensor weight, Tensor bias, float eps) -> Tensor",
        &costeff_native::embedding_layernorm);
}
