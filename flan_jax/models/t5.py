"""T5 v1.1 / Flan-T5 encoder-decoder (pre-norm RMSNorm, relative position bias, gated-GELU, no biases).

Parameter names follow T5X so released Flan-T5 checkpoints map 1:1 (see docs/ARCHITECTURE.md).
Masks follow Hugging Face T5: encoder self-attention and cross-attention skip padding keys
(token id 0); decoder self-attention is causal; packed examples (segment ids) never see each other.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from flan_jax.models import attention, layers
from flan_jax.models.configs import T5Config

Array = jax.Array


def _dropout(config: T5Config, x: Array, deterministic: bool) -> Array:
  return nn.Dropout(config.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + gated MLP; flags are attributes so the layer can be scanned."""
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, mask: Array | None, bias: Array) -> tuple[Array, None]:
    cfg, dtype = self.config, layers.as_dtype(self.config.dtype)
    norm = lambda name: layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name=name)
    h = norm("pre_attention_layer_norm")(x)
    self_attention = attention.MultiHeadAttention(
        cfg.num_heads, cfg.num_heads, cfg.head_dim, dtype, cfg.dropout_rate,
        scores_dtype=cfg.attention_scores_dtype, name="attention")
    h = self_attention(h, h, mask=mask, bias=bias, deterministic=self.deterministic)
    x = layers.constrain_residual(x + _dropout(cfg, h, self.deterministic))
    h = norm("pre_mlp_layer_norm")(x)
    h = layers.GatedMlp(cfg.mlp_dim, "gelu", cfg.dropout_rate, dtype, name="mlp")(
        h, self.deterministic)
    return layers.constrain_residual(x + _dropout(cfg, h, self.deterministic)), None


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, cross-attention to the encoder, gated MLP."""
  config: T5Config
  deterministic: bool = True
  decode: bool = False
  max_decode_length: int | None = None

  @nn.compact
  def __call__(self, x: Array, encoded: Array, self_mask: Array | None, cross_mask: Array | None,
               bias: Array) -> tuple[Array, None]:
    cfg, dtype = self.config, layers.as_dtype(self.config.dtype)
    norm = lambda name: layers.RMSNorm(cfg.layer_norm_epsilon, dtype, name=name)
    make_attention = lambda name: attention.MultiHeadAttention(
        cfg.num_heads, cfg.num_heads, cfg.head_dim, dtype, cfg.dropout_rate,
        scores_dtype=cfg.attention_scores_dtype, name=name)
    h = norm("pre_self_attention_layer_norm")(x)
    h = make_attention("self_attention")(h, h, mask=self_mask, bias=bias,
                                         deterministic=self.deterministic, decode=self.decode,
                                         max_decode_length=self.max_decode_length)
    x = layers.constrain_residual(x + _dropout(cfg, h, self.deterministic))
    h = norm("pre_cross_attention_layer_norm")(x)
    h = make_attention("encoder_decoder_attention")(h, encoded, mask=cross_mask,
                                                    deterministic=self.deterministic,
                                                    encoder_kv=self.decode)
    x = layers.constrain_residual(x + _dropout(cfg, h, self.deterministic))
    h = norm("pre_mlp_layer_norm")(x)
    h = layers.GatedMlp(cfg.mlp_dim, "gelu", cfg.dropout_rate, dtype, name="mlp")(
        h, self.deterministic)
    return layers.constrain_residual(x + _dropout(cfg, h, self.deterministic)), None


class Encoder(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, embedded: Array, tokens: Array, segment_ids: Array | None,
               deterministic: bool) -> Array:
    cfg = self.config
    length = tokens.shape[1]
    positions = jnp.arange(length)
    bias = attention.RelativePositionBias(cfg.num_heads, cfg.relative_attention_num_buckets,
                                          cfg.relative_attention_max_distance, bidirectional=True,
                                          name="relpos_bias")(positions, positions)
    mask = attention.padding_mask(tokens > 0, tokens > 0)
    if segment_ids is not None:
      mask = jnp.logical_and(mask, attention.segment_mask(segment_ids, segment_ids))
    x = _dropout(cfg, embedded, deterministic)
    x = layers.run_layers(cfg, EncoderLayer, cfg.num_encoder_layers, x, (mask, bias),
                   deterministic=deterministic)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, layers.as_dtype(cfg.dtype), name="encoder_norm")(x)
    return _dropout(cfg, x, deterministic)


class Decoder(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, embedded: Array, encoded: Array, encoder_tokens: Array,
               encoder_segment_ids: Array | None, decoder_segment_ids: Array | None,
               deterministic: bool, decode: bool, max_decode_length: int | None) -> Array:
    cfg = self.config
    batch, length = embedded.shape[:2]
    # While stepping through the cache the bias spans the whole cache; the layer picks its row.
    stepping = decode and length == 1 and max_decode_length is not None
    bias_len = max_decode_length if stepping else length
    positions = jnp.arange(bias_len)
    bias = attention.RelativePositionBias(cfg.num_heads, cfg.relative_attention_num_buckets,
                                          cfg.relative_attention_max_distance, bidirectional=False,
                                          name="relpos_bias")(positions, positions)
    self_mask = attention.causal_mask(batch, length)
    cross_mask = attention.padding_mask(jnp.ones((batch, length), bool), encoder_tokens > 0)
    if decoder_segment_ids is not None and not decode:
      self_mask = jnp.logical_and(self_mask, attention.segment_mask(decoder_segment_ids,
                                                                    decoder_segment_ids))
      if encoder_segment_ids is not None:
        cross_mask = jnp.logical_and(cross_mask, attention.segment_mask(decoder_segment_ids,
                                                                        encoder_segment_ids))
    x = _dropout(cfg, embedded, deterministic)
    x = layers.run_layers(cfg, DecoderLayer, cfg.num_decoder_layers, x,
                   (encoded, self_mask, cross_mask, bias), deterministic=deterministic,
                   decode=decode, max_decode_length=max_decode_length)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, layers.as_dtype(cfg.dtype), name="decoder_norm")(x)
    x = _dropout(cfg, x, deterministic)
    # Computed in the activation dtype with float32 accumulation and output (as under autocast).
    logits = layers.DenseGeneral((cfg.vocab_size,), ("embed", "vocab"),
                                 dtype=layers.as_dtype(cfg.dtype), out_dtype=jnp.float32,
                                 name="logits_dense")(x)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class Transformer(nn.Module):
  """T5 v1.1 encoder-decoder returning float32 logits [batch, length, vocab]."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, layers.as_dtype(cfg.dtype))
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)

  def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Array | None = None,
             encoder_positions: Array | None = None, *, enable_dropout: bool = True) -> Array:
    """Encoder output [batch, length, embed]; `encoder_positions` is accepted for the feature
    converter's sake and unused: relative positions come from token order, and segment masks keep
    packed examples apart."""
    del encoder_positions
    embedded = self.token_embedder(encoder_input_tokens)
    return self.encoder(embedded, encoder_input_tokens, encoder_segment_ids, not enable_dropout)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             decoder_target_tokens: Array, encoder_segment_ids: Array | None = None,
             decoder_segment_ids: Array | None = None, decoder_positions: Array | None = None, *,
             enable_dropout: bool = True, decode: bool = False,
             max_decode_length: int | None = None) -> Array:
    """Float32 logits [batch, length, vocab]. With `decode=True` after a cache-initializing call,
    `decoder_input_tokens` is one token [batch, 1] and the cache advances by one."""
    del decoder_target_tokens, decoder_positions  # masks come from causality and segment ids
    embedded = self.token_embedder(decoder_input_tokens)
    return self.decoder(embedded, encoded, encoder_input_tokens, encoder_segment_ids,
                        decoder_segment_ids, not enable_dropout, decode, max_decode_length)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, encoder_segment_ids: Array | None = None,
               decoder_segment_ids: Array | None = None, encoder_positions: Array | None = None,
               decoder_positions: Array | None = None, *, enable_dropout: bool = True,
               decode: bool = False) -> Array:
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                          enable_dropout=enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                       encoder_segment_ids, decoder_segment_ids, decoder_positions,
                       enable_dropout=enable_dropout, decode=decode)
