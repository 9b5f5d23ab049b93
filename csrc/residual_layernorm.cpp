// Fused bias + residual + LayerNorm, in place on a GEMM output: x <- LN(x + bias + residual) * weight +
// norm_bias, one row at a time while the row sits in L1 (torch needs add_, then layer_norm into a new tensor).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "checks.h"
#include "kernels.h"
#include "layernorm.h"

namespace costeff_native {

void bias_residual_layernorm_rows(const float* x, const float* bias, const float* residual, const float* weight,
                                  const float* norm_bias, int64_t rows, int64_t h, float eps, float* out) {
  at::parallel_for(0, rows, 16, [=](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* xr = x + t * h;
      const float* rr = residual + t * h;
      float* o = out + t * h;
      const float sum = sum3_into(o, xr, bias, rr, h);
      normalize_row(o, h, sum, weight, norm_bias, eps);
    }
  });
}

// x, residual [T, H] fp32 contiguous; bias, weight, norm_bias [H]. Returns x.
at::Tensor bias_residual_layernorm_(at::Tensor x, const at::Tensor& bias, const at::Tensor& residual,
                                    const at::Tensor& weight, const at::Tensor& norm_bias, double eps) {
  const char* op = "bias_residual_layernorm_";
  check_float(x, 2, op, "x");
  const int64_t rows = x.size(0), h = x.size(1);
  check_matrix(residual, rows, h, op, "residual");
  check_vector(bias, h, op, "bias");
  check_vector(weight, h, op, "weight");
  check_vector(norm_bias, h, op, "norm_bias");
  bias_residual_layernorm_rows(x.data_ptr<float>(), bias.data_ptr<float>(), residual.data_ptr<float>(),
                               weight.data_ptr<float>(), norm_bias.data_ptr<float>(), rows, h,
                               static_cast<float>(eps), x.data_ptr<float>());
  return x;
}

}  // namespace costeff_native

TORCH_LIBRARY_FRAGMENT(costeff_native, m) {
  m.def("bias_residual_layernorm_(Tensor(a!) x, Tensor bias, Tensor residual, Tensor weight, Tensor norm_bias, "
        "float eps) -> Tensor(a!)",
        &costeff_native::bias_residual_layernorm_);
}
