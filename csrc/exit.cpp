// The early-exit bookkeeping of one layer in two calls instead of a dozen small torch ops: the exit decision
// (softmax entropy of every row's logits below the threshold) and, once per layer, writing the exited rows'
// logits and exit layer into the outputs while the survivors' token spans are compacted into a new packed
// buffer with their new cu_seqlens, lengths and row ids.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

#include "checks.h"
#include "kernels.h"

namespace costeff_native {

// logits [B, C] fp32 contiguous. Returns [B] bool: entropy of softmax(logits) in nats < tau.
at::Tensor exit_decision(const at::Tensor& logits, double tau) {
  check_float(logits, 2, "exit_decision", "logits");
  const int64_t rows = logits.size(0), labels = logits.size(1);
  TORCH_CHECK(labels >= 1, "exit_decision: logits need at least one label");
  at::Tensor out = at::empty({rows}, logits.options().dtype(at::kBool));
  const float* z = logits.data_ptr<float>();
  bool* below = out.data_ptr<bool>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = z + r * labels;
    float top = x[0];
    for (int64_t c = 1; c < labels; ++c) top = std::max(top, x[c]);
    float total = 0.0f, weighted = 0.0f;  // sum exp(x - top), sum exp(x - top) * (x - top)
    for (int64_t c = 0; c < labels; ++c) {
      const float shifted = x[c] - top, e = std::exp(shifted);
      total += e;
      // e == 0 where shifted underflows or is -inf (logits more than the fp32 range apart): p ln p -> 0 there,
      // not 0 * -inf = NaN.
      if (e > 0.0f) weighted += e * shifted;
    }
    // H = -sum p ln p with p = e / total: H = ln(total) - weighted / total.
    const float entropy = std::log(total) - weighted / total;
    below[r] = entropy < tau;
  }
  return out;
}

// hidden [T, H] fp32, cu_seqlens [B + 1] int64, row_ids [B] int64, logits [B, C] fp32, exits [B] bool, all
// CPU; logits_out [N, C] fp32 and exit_layer [N] int64 are written in place at row_ids of the exited rows.
// Returns the survivors' hidden [T', H], cu_seqlens [B' + 1], lengths [B'] and row_ids [B'] (when no row
// exits: the inputs themselves and an empty lengths, so the caller keeps its batch).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> retire(
    const at::Tensor& hidden, const at::Tensor& cu_seqlens, const at::Tensor& row_ids, const at::Tensor& logits,
    const at::Tensor& exits, at::Tensor& logits_out, at::Tensor& exit_layer, int64_t layer) {
  const char* op = "retire";
  check_float(hidden, 2, op, "hidden");
  check_varlen(cu_seqlens, hidden.size(0), hidden.size(0), op);
  const int64_t rows = cu_seqlens.numel() - 1;
  check_float(logits, 2, op, "logits");
  check_float(logits_out, 2, op, "logits_out");
  const int64_t labels = logits.size(1), n = logits_out.size(0);
  TORCH_CHECK(logits.size(0) == rows && logits_out.size(1) == labels, op,
              ": logits must be [B, C] and logits_out [N, C] with the same C");
  TORCH_CHECK(exits.device().is_cpu() && exits.scalar_type() == at::kBool && exits.dim() == 1 &&
                  exits.is_contiguous() && exits.numel() == rows,
              op, ": exits must be a contiguous bool CPU vector with one entry per row");
  for (const at::Tensor* t : {&row_ids, static_cast<const at::Tensor*>(&exit_layer)}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kLong && t->dim() == 1 && t->is_contiguous(), op,
                ": row_ids and exit_layer must be contiguous int64 CPU vectors");
  }
  TORCH_CHECK(row_ids.numel() == rows && exit_layer.numel() == n, op,
              ": row_ids needs one entry per row and exit_layer one per output row");
  const int64_t* cu = cu_seqlens.data_ptr<int64_t>();
  const int64_t* ids = row_ids.data_ptr<int64_t>();
  const bool* ex = exits.data_ptr<bool>();
  const float* z = logits.data_ptr<float>();
  float* z_out = logits_out.data_ptr<float>();
  int64_t* layer_out = exit_layer.data_ptr<int64_t>();
  std::vector<int64_t> kept;
  for (int64_t r = 0; r < rows; ++r) {
    if (!ex[r]) {
      kept.push_back(r);
      continue;
    }
    TORCH_CHECK(ids[r] >= 0 && ids[r] < n, op, ": row id ", ids[r], " is outside the ", n, " output rows");
    std::memcpy(z_out + ids[r] * labels, z + r * labels, sizeof(float) * labels);
    layer_out[ids[r]] = layer;
  }
  const int64_t survivors = static_cast<int64_t>(kept.size()), h = hidden.size(1);
  if (survivors == rows) return {hidden, cu_seqlens, at::empty({0}, cu_seqlens.options()), row_ids};  // nothing moves
  const auto long_options = cu_seqlens.options();
  at::Tensor new_cu = at::empty({survivors + 1}, long_options);
  at::Tensor lengths = at::empty({survivors}, long_options);
  at::Tensor new_ids = at::empty({survivors}, long_options);
  int64_t* ncu = new_cu.data_ptr<int64_t>();
  int64_t* len = lengths.data_ptr<int64_t>();
  int64_t* nid = new_ids.data_ptr<int64_t>();
  ncu[0] = 0;
  for (int64_t i = 0; i < survivors; ++i) {
    const int64_t r = kept[i];
    len[i] = cu[r + 1] - cu[r];
    ncu[i + 1] = ncu[i] + len[i];
    nid[i] = ids[r];
  }
  at::Tensor out = at::empty({ncu[survivors], h}, hidden.options());
  copy_spans(hidden.data_ptr<float>(), cu, kept.data(), ncu, survivors, h, out.data_ptr<float>());
  return {out, new_cu, lengths, new_ids};
}

}  // namespace costeff_native

TORCH_LIBRARY_FRAGMENT(costeff_native, m) {
  m.def("exit_decision(Tensor logits, float tau) -> Tensor", &costeff_native::exit_decision);
  m.def("retire(Tensor hidden, Tensor cu_seqlens, Tensor row_ids, Tensor logits, Tensor exits, "
        "Tensor(a!) logits_out, Tensor(b!) exit_layer, int layer) -> (Tensor, Tensor, Tensor, Tensor)",
        &costeff_native::retire);
}
