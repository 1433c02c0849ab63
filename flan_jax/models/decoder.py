"""Decoder-only language model covering PaLM and the Llama family through `DecoderConfig` switches.

PaLM: parallel block (`x + attn(norm(x)) + mlp(norm(x))`), multi-query attention, RoPE, SwiGLU,
tied input/output embedding with logits scaled by 1/sqrt(emb_dim), no biases. Llama: sequential
block, grouped-query attention, RoPE ("rotate halves", as in Hugging Face), SwiGLU, untied head.
Prefix-LM: `decoder_causal_attention` (1 on the prefix) lets prefix positions see each other.
Parameter names: `token_embedder/embedding`, `decoder/layers_N/{pre_self_attention_layer_norm,
self_attention/{query,key,value,out},pre_mlp_layer_norm (sequential only),mlp/{wi_0,wi_1,wo}}`,
`decoder/decoder_norm/scale`, `decoder/logits_dense/kernel` (untied only).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from flan_jax.models import attention, layers
from flan_jax.models.configs import DecoderConfig

Array = jax.Array


class DecoderOnlyLayer(nn.Module):
  """One block; flags are attributes so the layer can be scanned and rematerialized."""
  config: DecoderConfig
  deterministic: bool = True
  decode: bool = False
  prefill: bool = False
  max_decode_length: int | None = None

  @nn.compact
  def __call__(self, x: Array, mask: Array | None, positions: Array | None,
               prefill_lengths: Array | None) -> tuple[Array, None]:
    cfg, dtype = self.config, layers.as_dtype(self.config.dtype)
    drop = lambda y: nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(
        y, deterministic=self.deterministic)
    mlp = layers.GatedMlp(cfg.mlp_dim, "silu", cfg.dropout_rate, dtype, name="mlp")
    h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_self_attention_layer_norm")(x)
    attended = attention.MultiHeadAttention(
        cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, dtype, cfg.dropout_rate, scale_logits=True,
        rope_theta=cfg.rope_theta, scores_dtype=cfg.attention_scores_dtype, name="self_attention")(
            h, h, mask=mask, deterministic=self.deterministic, decode=self.decode,
            prefill=self.prefill, prefill_lengths=prefill_lengths, query_positions=positions,
            max_decode_length=self.max_decode_length)
    if cfg.parallel_block:
      x = x + drop(attended) + drop(mlp(h, self.deterministic))
    else:
      x = layers.constrain_residual(x + drop(attended))
      h = layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
      x = x + drop(mlp(h, self.deterministic))
    return layers.constrain_residual(x), None


class _Stack(nn.Module):
  """The `decoder` scope: layers, final norm and (untied) output projection."""
  config: DecoderConfig

  @nn.compact
  def __call__(self, x: Array, mask: Array | None, positions: Array | None,
               prefill_lengths: Array | None, deterministic: bool, decode: bool, prefill: bool,
               max_decode_length: int | None) -> Array:
    cfg = self.config
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    x = layers.run_layers(cfg, DecoderOnlyLayer, cfg.num_layers, x,
                          (mask, positions, prefill_lengths),
                   deterministic=deterministic, decode=decode, prefill=prefill,
                   max_decode_length=max_decode_length)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, layers.as_dtype(cfg.dtype), name="decoder_norm")(x)
    x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
    if cfg.logits_via_embedding:
      return x
    return layers.DenseGeneral((cfg.vocab_size,), ("embed", "vocab"),
                               dtype=layers.as_dtype(cfg.dtype), out_dtype=jnp.float32,
                               name="logits_dense")(x)


def decoder_mask(batch: int, length: int, causal_attention: Array | None,
                 segment_ids: Array | None) -> Array:
  """[batch, length, length] bool: causal, plus full attention inside the prefix, within segments."""
  mask = attention.causal_mask(batch, length)
  if causal_attention is not None:
    prefix = causal_attention.astype(bool)
    mask = jnp.logical_or(mask, attention.padding_mask(prefix, prefix))
  if segment_ids is not None:
    mask = jnp.logical_and(mask, attention.segment_mask(segment_ids, segment_ids))
  return mask


class DecoderOnly(nn.Module):
  """Decoder-only LM returning float32 logits [batch, length, vocab]."""
  config: DecoderConfig

  @nn.compact
  def __call__(self, decoder_input_tokens: Array, decoder_target_tokens: Array | None = None,
               decoder_segment_ids: Array | None = None, decoder_positions: Array | None = None,
               decoder_causal_attention: Array | None = None, *, enable_dropout: bool = True,
               decode: bool = False, prefill: bool = False, prefill_lengths: Array | None = None,
               max_decode_length: int | None = None) -> Array:
    """Logits for every input position.

    decode=True: the first call (e.g. `init`) creates a cache of `max_decode_length` (default: the
    input length) positions; later calls take one token each. prefill=True (with decode=True, on
    an initialized cache) runs a whole prompt [batch, L], writes positions 0..L-1 and leaves each
    row's cache index at its prompt length, `prefill_lengths` [batch] (default L), so that row's
    decoding continues there; prompts of different lengths are right-padded to L (the padding
    slots are masked, then overwritten by the generated tokens). With `decoder_causal_attention`
    the prefix attends bidirectionally, as in prefix-LM training, unless the config sets
    `bidirectional_prefix=False`.
    """
    del decoder_target_tokens  # masks come from causality, the prefix and segment ids
    cfg = self.config
    if prefill and not decode:
      raise ValueError("prefill=True fills the decoding cache; pass decode=True as well")
    if prefill_lengths is not None and not prefill:
      raise ValueError("prefill_lengths only applies to prefill=True calls")
    batch, length = decoder_input_tokens.shape
    embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, layers.as_dtype(cfg.dtype),
                            name="token_embedder")
    x = embedder(decoder_input_tokens)
    stepping = decode and not prefill and length == 1
    prefix = decoder_causal_attention if cfg.bidirectional_prefix else None
    mask = None if stepping else decoder_mask(batch, length, prefix, decoder_segment_ids)
    positions = None if decode else decoder_positions
    x = _Stack(cfg, name="decoder")(x, mask, positions, prefill_lengths, not enable_dropout,
                                    decode, prefill, max_decode_length)
    if cfg.logits_via_embedding:
      x = embedder.attend(x)
      if cfg.scale_tied_logits:
        x = x / jnp.sqrt(jnp.float32(cfg.emb_dim))
    return nn.with_logical_constraint(x, ("batch", "length", "vocab"))
