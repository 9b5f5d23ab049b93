// Fused bias + residual + LayerNorm, in place on a GEMM output: x <- LN(x + bias + residual) * weight +
// norm_bias, one row at a time while the row sits in L1 (torch needs add_, then layer_norm into a new tensor).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cmath>

namespace costeff_native {

static void check_vector(const at::Tensor& t, int64_t size, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 1 && t.is_contiguous() &&
                  t.size(0) == size,
              "bias_residual_layernorm_: ", name, " must be a contiguous float32 CPU vector of size ", size);
}

// x, residual [T, H] fp32 contiguous; bias, weight, norm_bias [H]. Returns x.
at::Tensor bias_residual_layernorm_(at::Tensor x, const at::Tensor& bias, const at::Tensor& residual,
                                    const at::Tensor& weight, const at::Tensor& norm_bias, double eps) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous(),
              "bias_residual_layernorm_: x must be a contiguous 2-D float32 CPU tensor");
  TORCH_CHECK(residual.sizes() == x.sizes() && residual.scalar_type() == at::kFloat && residual.is_contiguous(),
              "bias_residual_layernorm_: residual must be a contiguous float32 tensor of x's shape");
  const int64_t rows = x.size(0), h = x.size(1);
  check_vector(bias, h, "bias");
  check_vector(weight, h, "weight");
  check_vector(norm_bias, h, "norm_bias");
  float* xp = x.data_ptr<float>();
  const float* rp = residual.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  const float* nb = norm_bias.data_ptr<float>();
  const float feps = static_cast<float>(eps);
  at::parallel_for(0, rows, 16, [=](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      float* xr = xp + t * h;
      const float* rr = rp + t * h;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < h; ++j) {
        const float value = xr[j] + b[j] + rr[j];
        xr[j] = value;
        sum += value;
      }
      const float mean = sum / static_cast<float>(h);
      float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
      for (int64_t j = 0; j < h; ++j) {
        const float centered = xr[j] - mean;
        squares += centered * centered;
      }
      const float rstd = 1.0f / std::sqrt(squares / static_cast<float>(h) + feps);
#pragma omp simd
      for (int64_t j = 0; j < h; ++j) xr[j] = (xr[j] - mean) * rstd * w[j] + nb[j];
    }
  });
  return x;
}

}  // namespace costeff_native

TORCH_LIBRARY_FRAGMENT(costeff_native, m) {
  m.def("bias_residual_layernorm_(Tensor(a!) x, Tensor bias, Tensor residual, Tensor weight, Tensor norm_bias, "
        "float eps) -> Tensor(a!)",
        &costeff_native::bias_residual_layernorm_);
}
