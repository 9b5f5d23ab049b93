"""The fused layer kernel (costeff_fast.kernels.layer) against costeff_fast.reference and the per-op kernels.

CPU: Triton interpreter, fp32 and fp16. Error model for fp16 (unit roundoff u = 2^-11): the fused kernel rounds
to storage exactly where the per-op kernels store (qkv, context, the first LayerNorm's output, the GELU output,
the layer's output), with fp32 accumulation in between, so against the per-op kernels it may differ only by the
order of fp32 sums: at most one storage rounding flipped, one ulp of the output (relative 2^-10). Against the fp32
reference, each of those five roundings adds at most u relative to a value of the output's scale (LayerNorm
outputs pass their input error through at the normalized scale), plus the input's own rounding: at most
6 u max|out| on the layer output, and the same for the token means.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # the kernels pick the interpreter when they are defined: set it first
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

pytest.importorskip("triton")

from costeff_fast import kernels, reference  # noqa: E402
from costeff_fast.batch import PackedBatch  # noqa: E402
from costeff_fast.kernels.layer import encoder_layer_exit, fused_layer_supported  # noqa: E402
from costeff_fast.packing import PackedExit, PackedLayer  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
U16 = 2.0 ** -11
FIELDS = ["qkv_weight", "qkv_bias", "attention_output_weight", "attention_output_bias", "attention_norm_weight",
          "attention_norm_bias", "intermediate_weight", "intermediate_bias", "output_weight", "output_bias",
          "output_norm_weight", "output_norm_bias"]


def _layer(hidden, heads, head_size, ffn, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(DEVICE)

    width = heads * head_size
    return PackedLayer(heads, head_size, r(hidden, 3 * width, scale=hidden ** -0.5), r(3 * width, scale=0.1),
                       r(width, hidden, scale=width ** -0.5), r(hidden, scale=0.1), r(hidden, scale=0.1, shift=1.0),
                       r(hidden, scale=0.1), r(hidden, ffn, scale=hidden ** -0.5), r(ffn, scale=0.1),
                       r(ffn, hidden, scale=ffn ** -0.5), r(hidden, scale=0.1), r(hidden, scale=0.1, shift=1.0),
                       r(hidden, scale=0.1))


def _exit(kind, hidden, classes=3, seed=1):
    if kind is None:
        return None
    g = torch.Generator().manual_seed(seed)
    weight = lambda *shape: torch.randn(*shape, generator=g).to(DEVICE)  # noqa: E731
    pooling, pooler = kind.split("+") if "+" in kind else (kind, None)
    if pooler:
        return PackedExit(pooling, weight(hidden, hidden) * hidden ** -0.5, weight(hidden), weight(hidden, classes),
                          weight(classes))
    return PackedExit(pooling, None, None, weight(hidden, classes), weight(classes))


def _cast(layer, exit, dtype):
    layer = PackedLayer(layer.num_heads, layer.head_size, *[getattr(layer, f).to(dtype) for f in FIELDS])
    if exit is not None:
        exit = PackedExit(exit.pooling, *[None if t is None else t.to(dtype) for t in
                                          (exit.pooler_weight, exit.pooler_bias, exit.classifier_weight,
                                           exit.classifier_bias)])
    return layer, exit


def _rows(lengths, hidden, seed=2):
    lengths = torch.tensor(lengths)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    cu[1:] = lengths.cumsum(0)
    x = torch.randn(int(cu[-1]), hidden, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    return x, cu.to(DEVICE), int(lengths.max())


@pytest.mark.parametrize("hidden,heads,head_size,ffn,lengths,exit_kind", [
    # rows of 1 token, rows past one 16-token tile (online softmax rescaling): every kind of exit
    *[(48, 2, 32, 40, [5, 1, 37, 17], kind) for kind in (None, "mean", "cls", "cls+pooler")],
    (64, 1, 32, 24, [16, 3], "mean"),
    (96, 3, 32, 80, [2, 33, 9], "cls"),
    (64, 4, 64, 128, [20, 7], "mean"),
])
def test_fused_layer_matches_the_reference_in_fp32(hidden, heads, head_size, ffn, lengths, exit_kind):
    layer, exit = _layer(hidden, heads, head_size, ffn), _exit(exit_kind, hidden)
    x, cu, longest = _rows(lengths, hidden)
    out, features, logits, entropy = encoder_layer_exit(x, cu, longest, layer, 1e-12, exit)
    ref_out, ref_features, ref_logits, ref_entropy = reference.encoder_layer_exit(x, cu, longest, layer, 1e-12, exit)
    torch.testing.assert_close(out, ref_out, atol=1e-4, rtol=0)
    torch.testing.assert_close(features, ref_features, atol=1e-4, rtol=0)
    if exit_kind in ("mean", "cls"):  # the head ran in the kernel
        torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(entropy, ref_entropy, atol=1e-4, rtol=0)
    else:
        assert logits is None and entropy is None and ref_logits is None
    # what the exit reads: the token means of the output, or its [CLS] rows
    starts = cu[:-1]
    if exit_kind is not None and exit_kind.startswith("cls"):
        assert torch.equal(features, out[starts].float())
    else:
        means = torch.stack([out[s:e].mean(0) for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())])
        torch.testing.assert_close(features, means, atol=1e-5, rtol=0)


@pytest.mark.parametrize("exit_kind", ["mean", "cls"])
def test_fused_layer_in_fp16_is_the_per_op_path_and_within_the_error_model(exit_kind):
    hidden, heads, head_size, ffn = 96, 2, 32, 80
    layer32, exit32 = _layer(hidden, heads, head_size, ffn, seed=3), _exit(exit_kind, hidden, seed=4)
    layer, exit = _cast(layer32, exit32, torch.float16)
    x32, cu, longest = _rows([5, 1, 37, 17, 60], hidden, seed=5)
    x = x32.half()
    out, features, logits, entropy = encoder_layer_exit(x, cu, longest, layer, 1e-12, exit)
    # the per-op kernels on the same fp16 inputs
    qkv = kernels.linear(x, layer.qkv_weight, layer.qkv_bias)
    context = kernels.varlen_attention(qkv, cu, longest, heads, head_size)
    mid = kernels.linear_residual_layernorm(context, layer.attention_output_weight, layer.attention_output_bias, x,
                                            layer.attention_norm_weight, layer.attention_norm_bias, 1e-12)
    inter = kernels.linear(mid, layer.intermediate_weight, layer.intermediate_bias, gelu=True)
    per_op = kernels.linear_residual_layernorm(inter, layer.output_weight, layer.output_bias, mid,
                                               layer.output_norm_weight, layer.output_norm_bias, 1e-12)
    batch = PackedBatch.from_lengths(torch.tensor([5, 1, 37, 17, 60]), DEVICE)
    source = reference.exit_features(per_op, batch, exit_kind)
    per_op_logits, per_op_entropy, _ = kernels.exit_head(source, torch.arange(5, device=DEVICE),
                                                         exit.classifier_weight, exit.classifier_bias)
    torch.testing.assert_close(out, per_op, atol=0, rtol=2 ** -10)  # at most one ulp
    torch.testing.assert_close(logits, per_op_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, per_op_entropy, atol=1e-5, rtol=1e-5)
    # against the fp32 reference: six roundings of a value of the output's scale
    ref_out, ref_features, ref_logits, _ = reference.encoder_layer_exit(x32, cu, longest, layer32, 1e-12, exit32)
    bound = 6 * U16 * ref_out.abs().max().item()
    assert (out.float() - ref_out).abs().max().item() <= bound
    assert (features - ref_features).abs().max().item() <= bound
    # logits: sum over H of tanh(feature) * w, each term off by the feature's error (tanh' <= 1) plus two roundings
    w = exit32.classifier_weight.abs().sum(0)
    assert ((logits - ref_logits).abs() <= (bound + 2 * U16) * w).all()


def test_the_rule_takes_cost_eff_widths_and_refuses_wider_layers():
    assert fused_layer_supported(384, 2, 32, 160, 64)
    assert fused_layer_supported(512, 4, 64, 512, 128)
    assert not fused_layer_supported(768, 2, 32, 160, 64)   # spills: a 1024-column LayerNorm tile
    assert not fused_layer_supported(384, 5, 32, 160, 64)
    assert not fused_layer_supported(384, 2, 128, 160, 64)  # spills on sm_90
    assert not fused_layer_supported(384, 2, 16, 160, 64)   # spills on sm_80
    assert not fused_layer_supported(384, 2, 24, 160, 64)   # not a tl.dot size
    assert not fused_layer_supported(384, 2, 32, 640, 64)
    assert not fused_layer_supported(384, 2, 32, 160, 129)
    layer = _layer(768, 2, 32, 160)
    x, cu, longest = _rows([3, 4], 768)
    with pytest.raises(ValueError, match=r"fused layer takes hidden <= 512.*got hidden 768.*use the per-op kernels"):
        encoder_layer_exit(x, cu, longest, layer, 1e-12)
    layer = _layer(64, 2, 32, 32)
    x, cu, longest = _rows([3, 4], 64)
    with pytest.raises(ValueError, match=r"layer.qkv_weight must be a contiguous \[64, 192\] torch.float32"):
        encoder_layer_exit(x, cu, longest, PackedLayer(2, 32, layer.qkv_weight.half(),
                                                       *[getattr(layer, f) for f in FIELDS[1:]]), 1e-12)
    with pytest.raises(ValueError, match="exit pooling must be 'mean' or 'cls'"):
        encoder_layer_exit(x, cu, longest, layer, 1e-12, PackedExit("max", None, None, torch.zeros(64, 2), torch.zeros(2)))
    empty = encoder_layer_exit(x[:0], cu[:1], 0, layer, 1e-12, _exit("mean", 64))
    assert empty[0].shape == (0, 64) and empty[1].shape == (0, 64) and empty[2].shape == (0, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU's launch configuration and bf16")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("heads,head_size,ffn", [(2, 32, 160), (4, 64, 512), (1, 32, 96)])
def test_fused_layer_on_the_gpu_is_the_per_op_path(dtype, heads, head_size, ffn):
    """rt-standard widths (hidden 384) on 256 rows of 1-64 tokens: the fused kernel against the per-op kernels on the
    same inputs (the order of fp32 sums may flip a rounding: two ulps) and the fp32 reference (the error model)."""
    hidden = 384
    layer32, exit32 = _layer(hidden, heads, head_size, ffn, seed=6), _exit("mean", hidden, seed=7)
    layer, exit = _cast(layer32, exit32, dtype)
    lengths = [(i * 37) % 64 + 1 for i in range(256)]
    x32, cu, longest = _rows(lengths, hidden, seed=8)
    out, features, logits, entropy = encoder_layer_exit(x32.to(dtype), cu, longest, layer, 1e-12, exit)
    qkv = kernels.linear(x32.to(dtype), layer.qkv_weight, layer.qkv_bias)
    context = kernels.varlen_attention(qkv, cu, longest, heads, head_size)
    mid = kernels.linear_residual_layernorm(context, layer.attention_output_weight, layer.attention_output_bias,
                                            x32.to(dtype), layer.attention_norm_weight, layer.attention_norm_bias, 1e-12)
    inter = kernels.linear(mid, layer.intermediate_weight, layer.intermediate_bias, gelu=True)
    per_op = kernels.linear_residual_layernorm(inter, layer.output_weight, layer.output_bias, mid,
                                               layer.output_norm_weight, layer.output_norm_bias, 1e-12)
    ulp = 2.0 ** (-10 if dtype == torch.float16 else -7)
    torch.testing.assert_close(out, per_op, atol=0, rtol=2 * ulp)
    ref_out, ref_features, _, _ = reference.encoder_layer_exit(x32, cu, longest, layer32, 1e-12, exit32)
    u = ulp / 2
    assert (out.float() - ref_out).abs().max().item() <= 6 * u * ref_out.abs().max().item()
    assert (features - ref_features).abs().max().item() <= 6 * u * ref_out.abs().max().item()
    assert torch.isfinite(logits).all() and torch.isfinite(entropy).all()
