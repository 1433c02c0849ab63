"""Network configurations: `T5Config`, `DecoderConfig`, the shipped `CONFIGS`, and `model_config`.

Gin: a model gin (gin/models/<name>.gin) binds the macro `MODEL_CONFIG = @model_config()` with
`model_config.name = '<name>'`; fields can be overridden with `model_config.overrides = {...}`
(e.g. `{'scan_layers': True, 'remat_policy': 'full'}`) or per run with
`--gin.model_config.overrides="{'dtype': 'float32'}"`.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import gin


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
  """T5 v1.1 encoder-decoder (Flan-T5). Defaults are T5 v1.1 small."""
  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dropout_rate: float = 0.0
  dtype: str = "bfloat16"            # activations; parameters are always float32
  scan_layers: bool = False          # nn.scan over layers: params stacked under .../layers
  remat_policy: str = "none"         # 'none', 'full', 'dots_saveable', ... (layers.REMAT_POLICIES)
  # 'bfloat16' stores attention scores/probabilities in bf16 (softmax still in f32): for TPU, where
  # they dominate HBM traffic at long lengths; slower on CPU (attention.MultiHeadAttention._attend).
  attention_scores_dtype: str = "float32"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Decoder-only LM. PaLM: parallel_block, num_kv_heads=1, logits_via_embedding with
  scale_tied_logits. Llama: sequential block, GQA (num_kv_heads < num_heads), untied head."""
  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 8
  num_kv_heads: int = 8
  head_dim: int = 64
  mlp_dim: int = 2048
  num_layers: int = 8
  layer_norm_epsilon: float = 1e-6
  rope_theta: float = 10000.0
  parallel_block: bool = False       # PaLM: x + attn(norm(x)) + mlp(norm(x)) with one shared norm
  logits_via_embedding: bool = False  # tied input/output embedding (no decoder/logits_dense)
  scale_tied_logits: bool = False    # PaLM scales tied logits by 1/sqrt(emb_dim); HF Llama does not
  # Prefix-LM: the prompt (`decoder_causal_attention`) attends to itself both ways, in training and
  # in prefill. False keeps attention causal everywhere, as Llama checkpoints were pretrained.
  bidirectional_prefix: bool = True
  dropout_rate: float = 0.0
  dtype: str = "bfloat16"
  scan_layers: bool = False
  remat_policy: str = "none"
  attention_scores_dtype: str = "float32"  # see T5Config


def _t5(emb: int, mlp: int, heads: int, layers: int, head_dim: int = 64) -> T5Config:
  return T5Config(emb_dim=emb, mlp_dim=mlp, num_heads=heads, head_dim=head_dim,
                  num_encoder_layers=layers, num_decoder_layers=layers)


def _palm(emb: int, heads: int, layers: int) -> DecoderConfig:
  return DecoderConfig(vocab_size=256000, emb_dim=emb, num_heads=heads, num_kv_heads=1,
                       head_dim=256, mlp_dim=4 * emb, num_layers=layers, parallel_block=True,
                       logits_via_embedding=True, scale_tied_logits=True)


CONFIGS: dict[str, T5Config | DecoderConfig] = {
    # Test-size networks (random init; the T5 vocabulary size so real tokenizers fit).
    "flan_t5_tiny": T5Config(emb_dim=32, mlp_dim=64, num_heads=4, head_dim=8, dtype="float32",
                             num_encoder_layers=2, num_decoder_layers=2),
    "decoder_tiny": DecoderConfig(emb_dim=32, num_heads=4, num_kv_heads=1, head_dim=8, mlp_dim=64, dtype="float32",
                                  num_layers=2, parallel_block=True, logits_via_embedding=True,
                                  scale_tied_logits=True),
    # Flan-T5 = T5 v1.1 shapes (Chung et al., 2022).
    "flan_t5_small": _t5(512, 1024, 6, 8),
    "flan_t5_base": _t5(768, 2048, 12, 12),
    "flan_t5_large": _t5(1024, 2816, 16, 24),
    "flan_t5_xl": _t5(2048, 5120, 32, 24),
    "flan_t5_xxl": _t5(4096, 10240, 64, 24),
    # PaLM (Chowdhery et al., 2022): head size 256, d_ff = 4 d_model, multi-query, 256k vocab.
    "palm_8b": _palm(4096, 16, 32),
    "palm_62b": _palm(8192, 32, 64),
    "palm_540b": _palm(18432, 48, 118),
    # Llama family: Llama-2 7B (MHA) and Llama-3 8B (GQA, 8 kv heads).
    "llama2_7b": DecoderConfig(vocab_size=32000, emb_dim=4096, num_heads=32, num_kv_heads=32,
                               head_dim=128, mlp_dim=11008, num_layers=32, layer_norm_epsilon=1e-5,
                               bidirectional_prefix=False),
    "llama3_8b": DecoderConfig(vocab_size=128256, emb_dim=4096, num_heads=32, num_kv_heads=8,
                               head_dim=128, mlp_dim=14336, num_layers=32, layer_norm_epsilon=1e-5,
                               rope_theta=500000.0, bidirectional_prefix=False),
}

# Published parameter counts the shipped configs must reproduce (models.info checks them).
PUBLISHED_PARAMS: dict[str, float] = {
    "flan_t5_small": 77e6, "flan_t5_base": 248e6, "flan_t5_large": 783e6, "flan_t5_xl": 2.85e9,
    "flan_t5_xxl": 11.1e9, "palm_8b": 8.63e9, "palm_62b": 62.50e9, "palm_540b": 540.35e9,
    "llama2_7b": 6.74e9, "llama3_8b": 8.03e9,
}


def get_config(name: str) -> T5Config | DecoderConfig:
  """The shipped config `name`; an unknown name raises one error listing close names."""
  if name not in CONFIGS:
    close = difflib.get_close_matches(name, CONFIGS, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(f"unknown model config {name!r}; {hint}known: {', '.join(sorted(CONFIGS))}")
  return CONFIGS[name]


@gin.configurable
def model_config(name: str = gin.REQUIRED,
                 overrides: dict[str, Any] | None = None) -> T5Config | DecoderConfig:
  """The shipped config `name` with `overrides` (field → value) applied."""
  config = get_config(name)
  overrides = dict(overrides or {})
  known = {f.name for f in dataclasses.fields(config)}
  unknown = sorted(set(overrides) - known)
  if unknown:
    raise ValueError(f"model_config.overrides names {unknown}, which {type(config).__name__} does "
                     f"not have; valid fields: {', '.join(sorted(known))}")
  return dataclasses.replace(config, **overrides)
