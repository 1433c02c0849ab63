"""Building blocks shared by the T5 and decoder-only networks (Flax linen, logical axis names).

Numerics: parameters are float32; activations run in the config's dtype (bfloat16 by default).
Every matmul goes through `mixed_einsum`: operands in the compute dtype, float32 accumulation, and
the backward products take their operands in the compute dtype too (see `mixed_einsum` for why).
Norms, softmax and position encodings are computed in float32.

Kernel layouts (what the checkpoint converters rely on):
  query/key/value: [embed, heads, head_dim] ('embed', 'heads', 'kv');
  out: [heads, head_dim, embed] ('heads', 'kv', 'embed');
  mlp wi_0/wi_1: [embed, mlp]; wo: [mlp, embed]; token embedding: [vocab, embed].
Key/value kernels of multi-query / grouped-query attention name their head axis None (they are
replicated: a handful of kv heads rarely divides the model-parallel mesh axis).

RoPE uses the "rotate halves" convention of Hugging Face Llama: a head vector [x1, x2] (two halves)
becomes [x1*cos - x2*sin, x2*cos + x1*sin] with frequency i shared by dimensions i and i + d/2.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
import numpy as np

from flan_jax import reductions
from flan_jax.models.dropout import attention_dropout

Array = jax.Array
Initializer = Callable[..., Array]
_NEG_INF = -1e10

# Checkpoint names of `mixed_einsum` outputs: weight products (no batch dimension) and
# activation-by-activation products (attention scores and values, batched over examples/heads).
DOT_NAME, BATCHED_DOT_NAME = "dot", "batched_dot"

REMAT_POLICIES: dict[str, Any] = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    # The matmuls are custom-VJP calls, which jax's dots_* policies do not see: select them by name.
    "dots_saveable": jax.checkpoint_policies.save_only_these_names(DOT_NAME, BATCHED_DOT_NAME),
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.save_only_these_names(DOT_NAME),
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


# The residual stream [batch, length, embed] between sublayers. Its length axis has its own logical
# name so the rules can shard it over the tensor-parallel axis (sequence parallelism): norms,
# residual adds and dropout then run on 1/model of the tokens, and the all-reduce after each
# row-parallel product becomes a reduce-scatter (plus an all-gather before the next product).
RESIDUAL_AXES = ("batch", "residual_length", "embed")


def constrain_residual(x: Array) -> Array:
  return nn.with_logical_constraint(x, RESIDUAL_AXES)


def as_dtype(name: str | Any) -> Any:
  """'bfloat16' / 'float32' (or a dtype) → jnp dtype."""
  return jnp.dtype(name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum_f32_acc(spec: str, a: Array, b: Array) -> Array:
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _einsum_f32_acc_fwd(spec: str, a: Array, b: Array) -> tuple[Array, tuple[Array, Array]]:
  return _einsum_f32_acc(spec, a, b), (a, b)


def _expand_ellipsis(spec: str, ndim: int) -> str:
  """'...ab' → 'ABab' for a rank-4 operand (einsum's '...' as explicit uppercase letters)."""
  return spec.replace("...", "ABCDEFGH"[:ndim - len(spec) + 3]) if "..." in spec else spec


def _contract(spec_x: str, x: Array, spec_y: str, y: Array, out_spec: str) -> Array:
  """einsum(f'{spec_x},{spec_y}->{out_spec}') as one float32-accumulated dot_general, with the
  operands in the order whose natural output (batch, x-free, y-free dims) is `out_spec` when
  either order gives it.

  Which operand comes first decides the orientation of the product XLA computes: the attention
  values' gradient (cotangent · probabilities over q) written as [.., head_dim, k] needs no
  transpose, while the [.., k, head_dim] orientation makes XLA:CPU transpose the float32
  [batch, heads, q, k] probabilities first (a full copy of the largest tensor of each layer).
  """
  def natural(sx, sy):
    return ("".join(c for c in sx if c in sy and c in out_spec)
            + "".join(c for c in sx if c not in sy) + "".join(c for c in sy if c not in sx))
  if natural(spec_x, spec_y) != out_spec and natural(spec_y, spec_x) == out_spec:
    spec_x, x, spec_y, y = spec_y, y, spec_x, x
  batch = [c for c in spec_x if c in spec_y and c in out_spec]
  summed = [c for c in spec_x if c in spec_y and c not in out_spec]
  dims = (([spec_x.index(c) for c in summed], [spec_y.index(c) for c in summed]),
          ([spec_x.index(c) for c in batch], [spec_y.index(c) for c in batch]))
  out = jax.lax.dot_general(x, y, dims, preferred_element_type=jnp.float32)
  order = natural(spec_x, spec_y)
  return out if order == out_spec else jnp.transpose(out, [order.index(c) for c in out_spec])


def _grads_untransposed(spec_a: str, spec_b: str, out: str, a: Array, b: Array,
                        grad: Array) -> tuple[Array, Array]:
  """Both gradients of einsum(spec_a, spec_b -> out), each product oriented to need no transpose."""
  return _contract(out, grad, spec_b, b, spec_a), _contract(spec_a, a, out, grad, spec_b)


def _grads_plain(spec_a: str, spec_b: str, out: str, a: Array, b: Array,
                 grad: Array) -> tuple[Array, Array]:
  """The same gradients as einsums, leaving the orientation to the compiler."""
  return (jnp.einsum(f"{out},{spec_b}->{spec_a}", grad, b, preferred_element_type=jnp.float32),
          jnp.einsum(f"{spec_a},{out}->{spec_b}", a, grad, preferred_element_type=jnp.float32))


def _einsum_f32_acc_bwd(spec: str, residuals: tuple[Array, Array],
                        grad: Array) -> tuple[Array, Array]:
  """The untransposed products on CPU only: on TPU they made XLA lay out the attention backward
  worse (Flan-T5-XXL on v4-64, `python -m flan_jax.compile`: est. MFU 53% → 47% with them)."""
  a, b = residuals
  inputs, out = spec.split("->")
  spec_a, spec_b = inputs.split(",")
  spec_a, spec_b = _expand_ellipsis(spec_a, a.ndim), _expand_ellipsis(spec_b, b.ndim)
  out = _expand_ellipsis(out, grad.ndim)
  grad = grad.astype(a.dtype)
  specs = (spec_a, spec_b, out)
  grad_a, grad_b = jax.lax.platform_dependent(
      a, b, grad, cpu=functools.partial(_grads_untransposed, *specs),
      default=functools.partial(_grads_plain, *specs))
  return grad_a.astype(a.dtype), grad_b.astype(b.dtype)


_einsum_f32_acc.defvjp(_einsum_f32_acc_fwd, _einsum_f32_acc_bwd)


def mixed_einsum(spec: str, a: Array, b: Array, dtype: Any, name: str = DOT_NAME) -> Array:
  """float32 einsum(spec, a, b) of operands cast to `dtype`, in both the forward and backward pass.

  Plain autodiff of a bf16 × bf16 → f32 product hands its transposes a float32 cotangent, so two
  thirds of the training FLOPs run as float32 matmuls (half the bf16 rate on CPUs with AVX512-BF16;
  slower still on TPU/GPU). Here the cotangent is cast to `dtype` first, as PyTorch autocast does;
  with dtype float32 nothing changes. Every index of `a` must appear in `b` or in the output (and
  vice versa): true of all products in these networks. The output is tagged `name` for the remat
  policies above.
  """
  out = _einsum_f32_acc(spec, a.astype(dtype), b.astype(dtype))
  return checkpoint_name(out, name)


def _reshaped_init(init: Initializer, in_size: int, out_size: int) -> Initializer:
  """Initializes an N-d kernel as the 2-d [inputs, outputs] matrix it is (fan-in/out right)."""
  def wrapped(key, shape, dtype=jnp.float32):
    return init(key, (in_size, out_size), dtype).reshape(shape)
  return wrapped


def default_kernel_init(scale: float = 1.0) -> Initializer:
  return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


class DenseGeneral(nn.Module):
  """y = x · kernel over the trailing `num_in` axes of x, producing `features` trailing axes.

  The kernel is [*x.shape[-num_in:], *features] with logical axes `kernel_axes`.
  """
  features: Sequence[int]
  kernel_axes: Sequence[str | None]
  num_in: int = 1
  dtype: Any = jnp.bfloat16
  out_dtype: Any = None
  kernel_init: Initializer = default_kernel_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = tuple(x.shape[-self.num_in:])
    features = tuple(self.features)
    init = _reshaped_init(self.kernel_init, int(np.prod(in_shape)), int(np.prod(features)))
    kernel = self.param("kernel", nn.with_logical_partitioning(init, tuple(self.kernel_axes)),
                        in_shape + features, jnp.float32)
    letters = "abcdefghijklmnopqrstuvwxyz"
    contracted = letters[:self.num_in]
    produced = letters[self.num_in:self.num_in + len(features)]
    out = mixed_einsum(f"...{contracted},{contracted}{produced}->...{produced}", x, kernel,
                       self.dtype)
    return out.astype(self.out_dtype or self.dtype)


class RMSNorm(nn.Module):
  """Root-mean-square layer norm (no mean subtraction, no bias), computed in float32."""
  epsilon: float = 1e-6
  dtype: Any = jnp.bfloat16

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return (y * scale).astype(self.dtype)


class Embed(nn.Module):
  """Token embedding table [vocab, embed]; `attend` gives float32 logits against it (tied head)."""
  num_embeddings: int
  features: int
  dtype: Any = jnp.bfloat16
  embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(self.embedding_init, ("vocab", "embed")),
        (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, tokens: Array) -> Array:
    out = jnp.take(self.embedding, tokens.astype(jnp.int32), axis=0).astype(self.dtype)
    return constrain_residual(out)

  def attend(self, x: Array) -> Array:
    """Float32 logits x · embeddingᵀ, computed in the embedder's dtype (f32 accumulation)."""
    return mixed_einsum("...e,ve->...v", x, self.embedding, self.dtype)


class GatedMlp(nn.Module):
  """act(x·wi_0) * (x·wi_1) → dropout → ·wo. 'gelu' (tanh approximation, T5 v1.1) or 'silu' (SwiGLU)."""
  mlp_dim: int
  activation: str = "gelu"
  dropout_rate: float = 0.0
  dtype: Any = jnp.bfloat16

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    dense = functools.partial(DenseGeneral, features=(self.mlp_dim,), kernel_axes=("embed", "mlp"),
                              dtype=self.dtype)
    gate = dense(name="wi_0")(x)
    up = dense(name="wi_1")(x)
    if self.activation == "gelu":
      gate = jax.nn.gelu(gate.astype(jnp.float32), approximate=True)
    elif self.activation == "silu":
      gate = jax.nn.silu(gate.astype(jnp.float32))
    else:
      raise ValueError(f"unknown MLP activation {self.activation!r}; use 'gelu' or 'silu'")
    h = (gate * up.astype(jnp.float32)).astype(self.dtype)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
    return DenseGeneral((x.shape[-1],), ("mlp", "embed"), dtype=self.dtype, name="wo")(h)


@jax.custom_vjp
def _add_broadcast_bias(logits: Array, bias: Array) -> Array:
  """logits + bias, where bias has 1 or batch rows; the same sum, with a faster gradient.

  The gradient of a bias shared by the batch is the cotangent summed over its leading (batch)
  axis. XLA:CPU fuses that reduction, the mask and the gather's transpose into one loop that
  reads every layer's [batch, heads, q, k] cotangent with a transposed access pattern: 3.0 s for
  the 8 encoder layers of T5-small at 8 × 512, more than their attention matmuls. Summing the
  rows as a matrix-vector product (ones · cotangent) takes 0.14 s (both measured under load).
  """
  return logits + bias


def _add_broadcast_bias_fwd(logits: Array, bias: Array) -> tuple[Array, int]:
  return logits + bias, bias.shape[0]


def _add_broadcast_bias_bwd(bias_rows: int, grad: Array) -> tuple[Array, Array]:
  return grad, grad if bias_rows == grad.shape[0] else reductions.sum_over(grad, 0, keepdims=True)


_add_broadcast_bias.defvjp(_add_broadcast_bias_fwd, _add_broadcast_bias_bwd)


@jax.custom_vjp
def _biased_softmax(logits: Array, bias: Array | None, mask: Array | None) -> Array:
  """softmax(logits + bias, masked) over the last axis, computed in float32, returned in logits' dtype.

  For low-precision (bf16) scores: plain autodiff would keep float32 residuals and cotangents of
  the [batch, heads, q, k] tensor between fusions. Here the only residual is the bf16 output,
  and the backward pass reads the bf16 probabilities and cotangent and writes a bf16 logits
  cotangent (plus the float32 bias gradient, summed over the batch when the bias is shared).
  `bias` (float32) has 1 or batch rows; `mask` is bool, True attends; both broadcast to logits.
  """
  return _biased_softmax_fwd(logits, bias, mask)[0]


def _biased_softmax_fwd(logits: Array, bias: Array | None,
                        mask: Array | None) -> tuple[Array, tuple[Array, Array | None]]:
  x = logits.astype(jnp.float32)
  if bias is not None:
    x = x + bias
  if mask is not None:
    x = jnp.where(mask, x, _NEG_INF)
  probs = jax.nn.softmax(x, axis=-1).astype(logits.dtype)
  return probs, (probs, bias)


def _biased_softmax_bwd(residuals: tuple[Array, Array | None],
                        grad: Array) -> tuple[Array, Array | None, None]:
  probs, bias = residuals
  p = probs.astype(jnp.float32)
  g = grad.astype(jnp.float32)
  dx = p * (g - jnp.sum(g * p, axis=-1, keepdims=True))
  dbias = None
  if bias is not None:
    dbias = dx if bias.shape[0] == dx.shape[0] else reductions.sum_over(dx, 0, keepdims=True)
    dbias = dbias.astype(bias.dtype)
  return dx.astype(probs.dtype), dbias, None


_biased_softmax.defvjp(_biased_softmax_fwd, _biased_softmax_bwd)


# ---- Position encodings ---------------------------------------------------------------------------

def relative_position_bucket(relative_position: Array, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
  """T5's bucket of `memory_position - query_position`: exact for small distances, log-spaced up to
  `max_distance`; the bidirectional variant spends half the buckets on each direction."""
  bucket = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (relative_position > 0).astype(relative_position.dtype) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = jnp.maximum(-relative_position, 0)
  max_exact = num_buckets // 2
  safe = jnp.maximum(distance, 1).astype(jnp.float32)
  large = max_exact + (jnp.log(safe / max_exact) / np.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(relative_position.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
  """One learned bias per (head, bucket): `rel_embedding` [heads, buckets] as in T5X."""
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  bidirectional: bool = True

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array) -> Array:
    """Float32 bias [1, heads, q, k] for 1-d integer positions."""
    table = self.param(
        "rel_embedding",
        nn.with_logical_partitioning(nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                                     ("heads", "relpos_buckets")),
        (self.num_heads, self.num_buckets), jnp.float32)
    relative = key_positions[None, :] - query_positions[:, None]
    buckets = relative_position_bucket(relative.astype(jnp.int32), bidirectional=self.bidirectional,
                                       num_buckets=self.num_buckets, max_distance=self.max_distance)
    return jnp.take(table, buckets, axis=1)[None]


def apply_rope(x: Array, positions: Array, theta: float) -> Array:
  """Rotary embedding (rotate-halves layout) of x [batch, length, heads, head_dim] at positions
  [batch, length]; computed in float32, returned in x's dtype."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (theta ** (np.arange(0, half, dtype=np.float32) * 2.0 / x.shape[-1]))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, l, half]
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


# ---- Masks ----------------------------------------------------------------------------------------

def padding_mask(query_ok: Array, key_ok: Array) -> Array:
  """[batch, q, k] bool: both positions are real tokens."""
  return jnp.logical_and(query_ok[:, :, None], key_ok[:, None, :])


def segment_mask(query_segments: Array, key_segments: Array) -> Array:
  """[batch, q, k] bool: query and key belong to the same packed example."""
  return query_segments[:, :, None] == key_segments[:, None, :]


def causal_mask(batch: int, length: int) -> Array:
  """[batch, length, length] bool: key position <= query position."""
  idx = jnp.arange(length)
  return jnp.broadcast_to(idx[None, :] <= idx[:, None], (batch, length, length))


# ---- Layer stacks ---------------------------------------------------------------------------------

def run_layers(parent_cfg: Any, layer_cls: type[nn.Module], num_layers: int, x: Array,
               args: tuple, **layer_kwargs: Any) -> Array:
  """Applies `num_layers` layers named layers_0.. or, with scan_layers, one scanned `layers` stack
  (params and cache stacked on a leading 'layers' axis), rematerialized per `remat_policy`.

  `layer_cls(config, **layer_kwargs)(x, *args)` must return `(x, None)` (the scan carry); `args`
  are the same for every layer. Call it inside a compact method.
  """
  remat = parent_cfg.remat_policy
  if remat not in ("none", *REMAT_POLICIES):
    raise ValueError(f"unknown remat_policy {remat!r}; use 'none' or one of "
                     f"{sorted(REMAT_POLICIES)}")
  cls = layer_cls
  if remat != "none":
    cls = nn.remat(layer_cls, policy=REMAT_POLICIES[remat],
                   prevent_cse=not parent_cfg.scan_layers)
  if parent_cfg.scan_layers:
    scanned = nn.scan(cls, variable_axes={"params": 0, "cache": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast,) * len(args), length=num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = scanned(parent_cfg, name="layers", **layer_kwargs)(x, *args)
    return x
  for i in range(num_layers):
    x, _ = cls(parent_cfg, name=f"layers_{i}", **layer_kwargs)(x, *args)
  return x


# ---- Attention ------------------------------------------------------------------------------------

def probs_times_values(weights: Array, value: Array, dtype: Any) -> Array:
  """[batch, kv_heads, groups, q, k] weights · [batch, k, kv_heads, head_dim] values, f32 out."""
  return mixed_einsum("bkgqs,bskd->bqkgd", weights, value, dtype, BATCHED_DOT_NAME)


def probs_times_values_untransposed(weights: Array, value: Array, dtype: Any) -> Array:
  """`probs_times_values` with the values as [batch, kv_heads, head_dim, k], the CPU choice.

  Their gradient then comes out of the backward product in this orientation, and XLA:CPU does not
  transpose the float32 [.., q, k] probabilities to compute it (see `_contract`). Bit-identical;
  T5-small encoder attention forward + backward 432 → 409 ms (interleaved A/B, load 2.7). Keys
  stay [batch, k, kv_heads, head_dim]: XLA:CPU has no bf16 × bf16 → f32 kernel for the scores
  product with keys as [.., head_dim, k]. On TPU the plain form lays out better.
  """
  return mixed_einsum("bkgqs,bkds->bqkgd", weights, jnp.transpose(value, (0, 2, 3, 1)), dtype,
                      BATCHED_DOT_NAME)


class MultiHeadAttention(nn.Module):
  """Dot-product attention with num_kv_heads ≤ num_heads (MHA, GQA, or MQA when 1).

  `scale_logits=False` is T5's convention (the 1/sqrt(head_dim) lives in the query initializer);
  the decoder-only models scale explicitly. RoPE (`rope_theta`) assumes self-attention.
  With `decode=True` keys/values go to the `cache` collection (`cached_key`, `cached_value`
  [batch, kv_heads, cache_length, head_dim] and `cache_index` [batch]): the first
  (initializing) call sizes the cache and attends as in training; later calls take one token
  each, or, with `prefill=True`, a whole prompt written from position 0. The cache is created in
  the activation dtype; a caller may convert it (`BaseModel` keeps it in float32 on CPU), and the
  one-token products then run in the cache's dtype.

  The cache index is per row, so rows of one batch may hold prompts of different lengths
  (`prefill_lengths`): row r's next token goes to slot `cache_index[r]`, attends to slots
  <= that index, and takes that index as its RoPE position, exactly the teacher-forced layout.
  Slots a shorter prompt's padding filled during prefill are masked until generated tokens
  overwrite them.
  """
  num_heads: int
  num_kv_heads: int
  head_dim: int
  dtype: Any = jnp.bfloat16
  dropout_rate: float = 0.0
  scale_logits: bool = False
  rope_theta: float | None = None
  scores_dtype: Any = jnp.float32  # storage dtype of the [batch, heads, q, k] scores (see _attend)

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, *, mask: Array | None = None,
               bias: Array | None = None, deterministic: bool = True, decode: bool = False,
               prefill: bool = False, prefill_lengths: Array | None = None,
               query_positions: Array | None = None,
               max_decode_length: int | None = None) -> Array:
    """Attention output [batch, q, embed].

    Args:
      inputs_q: [batch, q, embed] queries; inputs_kv: [batch, k, embed] keys/values.
      mask: bool [batch, q, k], True attends. Ignored by single-token decoding (causal over the
        cache); with prefill it covers the prompt.
      prefill_lengths: int [batch], with prefill: the number of real prompt tokens per row
        (default: all q); decoding continues at that slot.
      bias: float32 [1 or batch, heads, q, k] added to the logits; when decoding one token it
        spans the whole cache ([.., cache_length, cache_length]) and the current row is used.
      query_positions: [batch, q] positions for RoPE (default: arange, or from the cache index).
      max_decode_length: cache length, read by the initializing decode call (default: input length).
    """
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads="
                       f"{self.num_kv_heads}; pick a divisor")
    kv_head_axis = "heads" if self.num_kv_heads == self.num_heads else None
    query_init = default_kernel_init(1.0 if self.scale_logits else self.head_dim ** -0.5)
    query = DenseGeneral((self.num_heads, self.head_dim), ("embed", "heads", "kv"),
                         dtype=self.dtype, kernel_init=query_init, name="query")(inputs_q)
    kv_proj = functools.partial(DenseGeneral, (self.num_kv_heads, self.head_dim),
                                ("embed", kv_head_axis, "kv"), dtype=self.dtype)
    key = kv_proj(name="key")(inputs_kv)
    value = kv_proj(name="value")(inputs_kv)
    query = nn.with_logical_constraint(query, ("batch", "length", "heads", "kv"))

    batch, q_len = query.shape[:2]
    stepping = decode and self.has_variable("cache", "cached_key")
    if stepping and not prefill and q_len != 1:
      raise ValueError(f"decode=True takes one token per call, got {q_len}; pass prefill=True to "
                       f"fill the cache from a whole prompt")
    if decode:
      # Heads before positions: the one-token step then reads the cache in the layout of its two
      # products, where [batch, cache, heads, head_dim] made XLA transpose the whole cache twice
      # per layer and step.
      cache_shape = (batch, self.num_kv_heads, max_decode_length or key.shape[1], self.head_dim)
      cached_key = self.variable("cache", "cached_key", jnp.zeros, cache_shape, self.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, cache_shape, self.dtype)
      # One entry per row (rows may be at different positions), so code that reorders cache rows
      # (beam search) treats every cache leaf alike, with or without a leading layers axis.
      cache_index = self.variable("cache", "cache_index", jnp.zeros, (batch,), jnp.int32)
    index = cache_index.value if stepping and not prefill else jnp.zeros((batch,), jnp.int32)
    if self.rope_theta is not None:
      if query_positions is None:
        query_positions = index[:, None] + jnp.arange(q_len)[None, :]
      query = apply_rope(query, query_positions, self.rope_theta)
      key = apply_rope(key, query_positions, self.rope_theta)

    if stepping and prefill:
      # The prompt attends to itself only (the rest of the cache is empty): no padded mask.
      write = lambda cache, new: jax.lax.dynamic_update_slice_in_dim(
          cache, jnp.swapaxes(new, 1, 2).astype(cache.dtype), 0, axis=2)
      cached_key.value = write(cached_key.value, key)
      cached_value.value = write(cached_value.value, value)
      cache_index.value = (jnp.full((batch,), q_len, jnp.int32) if prefill_lengths is None
                           else prefill_lengths.astype(jnp.int32))
      mask = causal_mask(batch, q_len) if mask is None else mask
    elif stepping:
      # Each row writes its new key/value at its own slot, in place (a select over the whole
      # cache read and wrote all of it every step).
      rows = jnp.arange(batch)
      write = lambda cache, new: cache.at[rows, :, index, :].set(
          new[:, 0].astype(cache.dtype), indices_are_sorted=True, unique_indices=True)
      cached_key.value = write(cached_key.value, key)
      cached_value.value = write(cached_value.value, value)
      cache_index.value = index + 1
      mask = jnp.arange(cached_key.value.shape[2])[None, :] <= index[:, None]  # [batch, cache]
      if bias is not None:  # each row's query row of the whole-cache bias
        bias = jnp.take_along_axis(bias, index[:, None, None, None], axis=-2)
      out = self._attend_one_step(query, cached_key.value, cached_value.value, mask, bias)
    if not stepping or prefill:
      out = self._attend(query, key, value, mask, bias, deterministic)
    return DenseGeneral((inputs_q.shape[-1],), ("heads", "kv", "embed"), num_in=2,
                        dtype=self.dtype, name="out")(out)

  def _attend_one_step(self, query: Array, cached_key: Array, cached_value: Array, mask: Array,
                       bias: Array | None) -> Array:
    """One query per row against the cache: query [batch, 1, heads, head_dim], cache
    [batch, kv_heads, cache, head_dim], mask bool [batch, cache], bias [batch, heads, 1, cache].

    Both products run in the cache's dtype with float32 accumulation. XLA:CPU computes these
    one-row products with its own loop emitter, in float32 only: a bf16 cache was converted to a
    float32 copy (and the cache copied) every step, where a float32 cache is read as it is.
    """
    batch = query.shape[0]
    kv_heads, cache_length = cached_key.shape[1:3]
    groups = self.num_heads // kv_heads
    if self.scale_logits:
      query = query * jnp.asarray(self.head_dim ** -0.5, query.dtype)
    query = query.reshape(batch, kv_heads, groups, self.head_dim)
    logits = mixed_einsum("bkgd,bksd->bkgs", query, cached_key, cached_key.dtype, BATCHED_DOT_NAME)
    if bias is not None:
      logits = logits + bias.reshape(batch, kv_heads, groups, cache_length)
    logits = jnp.where(mask[:, None, None, :], logits, _NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1)
    out = mixed_einsum("bkgs,bksd->bkgd", weights, cached_value, cached_value.dtype,
                       BATCHED_DOT_NAME)
    return out.astype(self.dtype).reshape(batch, 1, self.num_heads, self.head_dim)

  def _attend(self, query: Array, key: Array, value: Array, mask: Array | None,
              bias: Array | None, deterministic: bool) -> Array:
    """softmax(q·k + bias, masked) · v, grouped so kv heads are never materialized per query head.

    Not `jax.nn.dot_product_attention`: with implementation=None (jax 0.10) it is this same
    einsum-softmax-einsum graph with no fused kernel on CPU or TPU, it cannot drop attention
    weights (T5 training does, dropout_rate 0.05 for Flan), its probs·v product runs bf16 → bf16
    (3× slower than f32 accumulation on this CPU) and its backward products take float32
    cotangents. Measured at T5-small encoder shape (8 × 512, 6 heads), forward + backward:
    0.78 s here vs 0.92 s for jax.nn.dot_product_attention (2-core CPU under load).

    `scores_dtype` bfloat16 stores the scores and probabilities in bf16 (the q·k product still
    accumulates in f32; bias, mask and softmax run in f32 inside `_biased_softmax`), halving the
    HBM traffic of the largest tensors of a long-sequence training step. For TPU: on this CPU,
    bf16 outputs are slower than f32 ones.
    """
    batch, q_len = query.shape[:2]
    k_len = key.shape[1]
    groups = self.num_heads // self.num_kv_heads
    if self.scale_logits:
      query = query * jnp.asarray(self.head_dim ** -0.5, query.dtype)
    query = query.reshape(batch, q_len, self.num_kv_heads, groups, self.head_dim)
    logits = mixed_einsum("bqkgd,bskd->bkgqs", query, key, self.dtype, BATCHED_DOT_NAME)
    if bias is not None:
      bias = bias.reshape(bias.shape[0], self.num_kv_heads, groups, q_len, k_len)
    if mask is not None:
      mask = mask[:, None, None]
    if as_dtype(self.scores_dtype) != jnp.float32:
      weights = _biased_softmax(logits.astype(self.scores_dtype), bias, mask)
    else:
      if bias is not None:
        logits = _add_broadcast_bias(logits, bias)
      if mask is not None:
        logits = jnp.where(mask, logits, _NEG_INF)
      weights = jax.nn.softmax(logits, axis=-1)
    if not deterministic and self.dropout_rate > 0:
      weights = attention_dropout(weights, self.dropout_rate, self.make_rng("dropout"))
    out = jax.lax.platform_dependent(
        weights, value, cpu=functools.partial(probs_times_values_untransposed, dtype=self.dtype),
        default=functools.partial(probs_times_values, dtype=self.dtype)).astype(self.dtype)
    out = out.reshape(batch, q_len, self.num_heads, self.head_dim)
    return nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
