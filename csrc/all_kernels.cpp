// Unity build of the native kernels: one translation unit, so the ATen headers are parsed once (a first build
// takes ~15 s instead of ~50 s on two cores). Each kernel keeps its own file.
#include "compact_tokens.cpp"
#include "embedding_layernorm.cpp"
#include "encoder_layer.cpp"
#include "exit.cpp"
#include "residual_layernorm.cpp"
#include "segment_mean.cpp"
#include "varlen_attention.cpp"
