// Varlen self-attention on packed tokens (flash-attention's varlen interface, no padding): for every row and
// head, softmax(Q K^T / sqrt(d)) V over that row's own tokens only, the QKV bias added on the fly (so the
// projection can be a plain mm). Work items are (row, head) pairs spread over at::parallel_for. Per item,
// K^T goes to a small zero-padded buffer; then blocks of queries run
// register-blocked micro-kernels (GCC vector extensions: AVX-512 or AVX2 with -march=native) for Q K^T and
// P V, with the softmax in between, all in L1. Head sizes that are not a multiple of the vector width take a
// plain loop path.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "checks.h"
#include "kernels.h"
#include "vec_math.h"

namespace costeff_native {

// One (row, head) item: rows of `stride` floats in qkv, q/v point at the head's columns, bq/bv at its biases.
struct Item {
  const float* q;
  const float* v;
  const float* bq;
  const float* bv;
  int64_t n, stride;
};

// s[qi][j] = q_(i0+qi) . k_j for QB queries and all keys; qs is [QB][d] (bias added, scaled by 1/sqrt(d)),
// kt is [d][npad] (zero-padded to kVec).
template <int QB>
void scores(const float* qs, int64_t d, const float* kt, int64_t npad, float* s) {
  for (int64_t j0 = 0; j0 < npad; j0 += kVec) {
    vfloat acc[QB] = {};
    for (int64_t c = 0; c < d; ++c) {
      const vfloat kv = load(kt + c * npad + j0);
      for (int qi = 0; qi < QB; ++qi) acc[qi] += qs[qi * d + c] * kv;
    }
    for (int qi = 0; qi < QB; ++qi) store(s + qi * npad + j0, acc[qi]);
  }
}

// Softmax numerators in place over the first n entries of each of the QB rows of s: exp(s - max), and
// 1 / sum in inv. Loops run over whole vectors (npad) with entries n..npad set to -1e30 (their exp is 1e-38,
// never read back), so GCC emits SIMD code without scalar tails.
template <int QB>
void softmax_rows(float* s, int64_t n, int64_t npad, float* inv) {
  for (int qi = 0; qi < QB; ++qi) {
    float* row = s + qi * npad;
    for (int64_t j = n; j < npad; ++j) row[j] = -1e30f;
    vfloat lane_max = load(row);
    for (int64_t j0 = kVec; j0 < npad; j0 += kVec) {
      const vfloat x = load(row + j0);
      lane_max = x > lane_max ? x : lane_max;
    }
    const float m = hmax(lane_max);
    float lane_sum[kVec] = {};
    for (int64_t j0 = 0; j0 < npad; j0 += kVec) {
      for (int l = 0; l < kVec; ++l) {
        const float e = exp_approx(row[j0 + l] - m);
        row[j0 + l] = e;
        lane_sum[l] += e;
      }
    }
    inv[qi] = 1.0f / hsum(load(lane_sum));
  }
}

// out[qi][:] = inv[qi] * sum_j p[qi][j] (v_j + bv) for d = DV * kVec.
template <int QB, int DV>
void weighted_values(const Item& it, const float* p, int64_t npad, const float* inv, float* out, int64_t ld) {
  vfloat acc[QB][DV] = {}, bias[DV];
  for (int dv = 0; dv < DV; ++dv) bias[dv] = load(it.bv + dv * kVec);
  for (int64_t j = 0; j < it.n; ++j) {
    vfloat vv[DV];
    for (int dv = 0; dv < DV; ++dv) vv[dv] = load(it.v + j * it.stride + dv * kVec) + bias[dv];
    for (int qi = 0; qi < QB; ++qi) {
      const float pj = p[qi * npad + j];
      for (int dv = 0; dv < DV; ++dv) acc[qi][dv] += pj * vv[dv];
    }
  }
  for (int qi = 0; qi < QB; ++qi) {
    for (int dv = 0; dv < DV; ++dv) store(out + qi * ld + dv * kVec, acc[qi][dv] * inv[qi]);
  }
}

// Any d: one query at a time, inner loops over contiguous memory.
void weighted_values_any(const Item& it, const float* p, int64_t d, float inv, float* acc, float* out) {
  std::fill(acc, acc + d, 0.0f);
  for (int64_t j = 0; j < it.n; ++j) {
    const float pj = p[j];
    const float* vj = it.v + j * it.stride;
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) acc[c] += pj * (vj[c] + it.bv[c]);
  }
#pragma omp simd
  for (int64_t c = 0; c < d; ++c) out[c] = acc[c] * inv;
}

// Queries [i0, i0 + QB) of one item: scores, softmax, weighted values into out (row stride ld). scratch
// holds 8 * d floats: the scaled query block, then the any-d path's accumulator.
template <int QB, int DV>
void query_block(const Item& it, int64_t i0, int64_t d, const float* kt, int64_t npad, float scale, float* s,
                 float* scratch, float* out, int64_t ld) {
  float inv[QB];
  for (int qi = 0; qi < QB; ++qi) {
    const float* q = it.q + (i0 + qi) * it.stride;
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) scratch[qi * d + c] = (q[c] + it.bq[c]) * scale;
  }
  scores<QB>(scratch, d, kt, npad, s);
  softmax_rows<QB>(s, it.n, npad, inv);
  if constexpr (DV > 0) {
    weighted_values<QB, DV>(it, s, npad, inv, out + i0 * ld, ld);
  } else {
    for (int qi = 0; qi < QB; ++qi) weighted_values_any(it, s + qi * npad, d, inv[qi], scratch, out + (i0 + qi) * ld);
  }
}

// Queries [i0, n) of one item: blocks of QB, then the tail in blocks of QB / 2, QB / 4, ... 1.
template <int QB, int DV>
void attend(const Item& it, int64_t i0, int64_t d, const float* kt, int64_t npad, float scale, float* s,
            float* scratch, float* out, int64_t ld) {
  for (; i0 + QB <= it.n; i0 += QB) query_block<QB, DV>(it, i0, d, kt, npad, scale, s, scratch, out, ld);
  if constexpr (QB > 1) {
    if (i0 < it.n) attend<QB / 2, DV>(it, i0, d, kt, npad, scale, s, scratch, out, ld);
  }
}

void attend_rows(const float* qkv, const float* bias, const int64_t* cu, int64_t rows, int64_t num_heads,
                 int64_t head_size, int64_t max_seqlen, float scale, float* out) {
  const int64_t d = head_size, width = num_heads * head_size, stride = 3 * width;
  const int64_t max_pad = (max_seqlen + kVec - 1) / kVec * kVec;
  at::parallel_for(0, rows * num_heads, 1, [=](int64_t begin, int64_t end) {
    std::vector<float> kt(d * max_pad), s(8 * max_pad), scratch(8 * d);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / num_heads, head = item % num_heads;
      const int64_t start = cu[row] - cu[0], n = cu[row + 1] - cu[row];
      const int64_t npad = (n + kVec - 1) / kVec * kVec;
      const float* q = qkv + start * stride + head * d;
      const float* bq = bias + head * d;
      const Item it{q, q + 2 * width, bq, bq + 2 * width, n, stride};
      const float* k = q + width;
      const float* bk = bq + width;
      for (int64_t c = 0; c < d; ++c) {
        float* ktc = kt.data() + c * npad;
        for (int64_t j = 0; j < n; ++j) ktc[j] = k[j * stride + c] + bk[c];
        std::fill(ktc + n, ktc + npad, 0.0f);
      }
      float* o = out + start * width + head * d;
      float* sp = s.data();
      float* ap = scratch.data();
      if (d == 8 * kVec) {
        attend<2, 8>(it, 0, d, kt.data(), npad, scale, sp, ap, o, width);
      } else if (d == 4 * kVec) {
        attend<4, 4>(it, 0, d, kt.data(), npad, scale, sp, ap, o, width);
      } else if (d == 2 * kVec) {
        attend<8, 2>(it, 0, d, kt.data(), npad, scale, sp, ap, o, width);
      } else if (d == kVec) {
        attend<8, 1>(it, 0, d, kt.data(), npad, scale, sp, ap, o, width);
      } else {
        attend<4, 0>(it, 0, d, kt.data(), npad, scale, sp, ap, o, width);
      }
    }
  });
}

// qkv [T, 3 * h * d] fp32 (columns Q heads | K heads | V heads) without its bias, bias [3 * h * d] added on
// the fly, cu_seqlens [B + 1] int64 on the CPU, scores scaled by softmax_scale. Returns the context [T, h * d] fp32.
at::Tensor varlen_attention(const at::Tensor& qkv, const at::Tensor& bias, const at::Tensor& cu_seqlens,
                            int64_t num_heads, int64_t head_size, int64_t max_seqlen, double softmax_scale) {
  check_float(qkv, 2, "varlen_attention", "qkv");
  TORCH_CHECK(num_heads >= 1 && head_size >= 1 && qkv.size(1) == 3 * num_heads * head_size,
              "varlen_attention: qkv has ", qkv.size(1), " columns, expected 3 * num_heads * head_size = ",
              3 * num_heads * head_size);
  check_vector(bias, qkv.size(1), "varlen_attention", "bias");
  check_varlen(cu_seqlens, qkv.size(0), max_seqlen, "varlen_attention");
  at::Tensor out = at::empty({qkv.size(0), num_heads * head_size}, qkv.options());
  attend_rows(qkv.data_ptr<float>(), bias.data_ptr<float>(), cu_seqlens.data_ptr<int64_t>(), cu_seqlens.numel() - 1,
              num_heads, head_size, max_seqlen, static_cast<float>(softmax_scale), out.data_ptr<float>());
  return out;
}

}  // namespace costeff_native

TORCH_LIBRARY_FRAGMENT(costeff_native, m) {
  m.def("varlen_attention(Tensor qkv, Tensor bias, Tensor cu_seqlens, int num_heads, int head_size, "
        "int max_seqlen, float softmax_scale) -> Tensor",
        &costeff_native::varlen_attention);
}
