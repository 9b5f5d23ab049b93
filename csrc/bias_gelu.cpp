// Fused bias + exact (erf) GELU, in place on a GEMM output: x <- gelu(x + bias), as BERT's "gelu".
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "vec_math.h"

namespace costeff_native {

// x [T, F] fp32 contiguous, bias [F]. Returns x.
at::Tensor bias_gelu_(at::Tensor x, const at::Tensor& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous(),
              "bias_gelu_: x must be a contiguous 2-D float32 CPU tensor");
  TORCH_CHECK(bias.device().is_cpu() && bias.scalar_type() == at::kFloat && bias.dim() == 1 &&
                  bias.is_contiguous() && bias.size(0) == x.size(1),
              "bias_gelu_: bias must be a contiguous float32 CPU vector of size ", x.size(1));
  const int64_t rows = x.size(0), f = x.size(1);
  float* xp = x.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  at::parallel_for(0, rows, 8, [=](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      float* xr = xp + t * f;
#pragma omp simd
      for (int64_t j = 0; j < f; ++j) {
        const float value = xr[j] + b[j];
        xr[j] = 0.5f * value * (1.0f + erf_approx(value * 0.70710678118654752f));
      }
    }
  });
  return x;
}

}  // namespace costeff_native

TORCH_LIBRARY_FRAGMENT(costeff_native, m) {
  m.def("bias_gelu_(Tensor(a!) x, Tensor bias) -> Tensor(a!)", &costeff_native::bias_gelu_);
}
