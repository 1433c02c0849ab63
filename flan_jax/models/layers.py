"""Building blocks shared by the T5 and decoder-only networks (Flax linen, logical axis names);
attention, position encodings and masks are in `attention.py`.

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


Array = jax.Array
Initializer = Callable[..., Array]
# Collection of the decoder's cross-attention keys and values while decoding (see
# attention.MultiHeadAttention): fixed for a whole decode, so kept apart from the `cache` that each
# step updates (and that beam search reorders). Here because `run_layers` stacks it too.
ENCODER_KV = "encoder_kv"

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


def mixed_einsum_bwd(spec: str, residuals: tuple[Array, Array],
                     grad: Array) -> tuple[Array, Array]:
  """Gradients of `mixed_einsum(spec, a, b)` given residuals (a, b) in the compute dtype.

  The untransposed products on CPU only: on TPU they made XLA lay out the attention backward
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


_einsum_f32_acc.defvjp(_einsum_f32_acc_fwd, mixed_einsum_bwd)


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
    scanned = nn.scan(cls, variable_axes={"params": 0, "cache": 0, ENCODER_KV: 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast,) * len(args), length=num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = scanned(parent_cfg, name="layers", **layer_kwargs)(x, *args)
    return x
  for i in range(num_layers):
    x, _ = cls(parent_cfg, name=f"layers_{i}", **layer_kwargs)(x, *args)
  return x
