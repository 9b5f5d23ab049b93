// The exit decision in one pass over each row's logits: the softmax entropy (nats) below the threshold.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "checks.h"

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

}  // namespace costeff_native

TORCH_LIBRARY_FRAGMENT(costeff_native, m) {
  m.def("exit_decision(Tensor logits, float tau) -> Tensor", &costeff_native::exit_decision);
}
