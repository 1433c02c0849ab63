"""Train state, and train / eval steps compiled once with explicit shardings.

The model is anything with the wrapper interface of docs/ARCHITECTURE.md
(`get_initial_variables`, `loss_fn(params, batch, dropout_rng) -> (loss, metrics)`), whose
parameters carry logical axis names (`nn.Partitioned` boxes).

Gradient accumulation over microbatches reproduces the large batch exactly when the trainer
knows how the model normalizes its loss (`loss_normalization`):
  'tokens'          loss = mean over the `num_tokens` target tokens of the batch (the wrappers'
                    default): microbatch gradients are weighted by their token counts;
  'microbatch_mean' loss = mean over the batch's sequences (fixed count per microbatch): plain mean;
  'sum'             loss = sum / a constant: microbatch gradients add up.
Reported metrics are token-weighted means in every mode. Left unset, the mode follows the model
wrapper's own `loss_normalization` (see `accumulation_mode`).

Steps return metrics as device arrays and never block; the caller fetches them when it logs.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flan_jax import partitioning
from flan_jax.optim import Optimizer

LOSS_NORMALIZATIONS = ("tokens", "microbatch_mean", "sum")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN/inf loss; nothing after the last good checkpoint was saved."""


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.Partitioned)


def unbox(tree: Any) -> Any:
  """Strips `nn.Partitioned` boxes without adding sharding constraints."""
  return jax.tree.map(lambda x: x.value if _is_box(x) else x, tree, is_leaf=_is_box)


def _opt_state_shardings(abstract_opt_state: Any, boxed_params: Any, mesh: Mesh,
                         rules: Sequence[tuple[str, Any]]) -> Any:
  """Shards optimizer state like the parameters it belongs to.

  Sub-trees shaped like the parameter tree (moments, Adafactor's factored row/column
  statistics) take their parameter's logical axes; a statistic with one dimension reduced away
  drops that axis name. Scalars (counts) are replicated.
  """
  params_def = jax.tree.structure(unbox(boxed_params))
  flat_boxed = jax.tree.leaves(boxed_params, is_leaf=_is_box)
  replicated = NamedSharding(mesh, PartitionSpec())

  def for_leaf(stat, boxed):
    names = tuple(boxed.names) if _is_box(boxed) else None
    pshape = (boxed.value if _is_box(boxed) else boxed).shape
    if names is None or stat.ndim == 0:
      return replicated
    if stat.shape == pshape:
      return NamedSharding(mesh, partitioning.logical_to_mesh_spec(names, stat.shape, mesh, rules))
    if stat.ndim == len(pshape) - 1:
      for dropped in reversed(range(len(pshape))):
        if tuple(pshape[:dropped]) + tuple(pshape[dropped + 1:]) == stat.shape:
          reduced = names[:dropped] + names[dropped + 1:]
          return NamedSharding(mesh, partitioning.logical_to_mesh_spec(reduced, stat.shape, mesh, rules))
    return replicated

  def for_subtree(subtree):
    if jax.tree.structure(subtree) == params_def:
      return jax.tree.unflatten(params_def, [
          for_leaf(s, b) for s, b in zip(jax.tree.leaves(subtree), flat_boxed)])
    return replicated

  return jax.tree.map(for_subtree, abstract_opt_state,
                      is_leaf=lambda x: jax.tree.structure(x) == params_def or hasattr(x, "shape"))


def estimate_flops_per_example(params: Any, feature_lengths: Mapping[str, int]) -> float:
  """≈ 6 · (matmul params) · (tokens they see) for one training example: an estimate.

  Encoder weights see `inputs` tokens, decoder weights `targets` (or `inputs + targets` for a
  decoder-only model); embedding lookups and attention score FLOPs are not counted.
  """
  total_len = sum(feature_lengths.values())
  flops = 0.0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [str(getattr(k, "key", k)) for k in path]
    if any("embedder" in k or "embedding" in k for k in keys) or len(leaf.shape) < 2:
      continue
    if keys[0] == "encoder":
      tokens = feature_lengths.get("inputs", total_len)
    elif keys[0] == "decoder" and "inputs" in feature_lengths and "encoder" in params:
      tokens = feature_lengths.get("targets", total_len)
    else:
      tokens = total_len
    flops += 6.0 * math.prod(leaf.shape) * tokens
  return flops


def accumulation_mode(model_loss_normalization: Any) -> str:
  """The microbatch weighting that matches a model wrapper's loss normalization."""
  if isinstance(model_loss_normalization, (int, float)) and not isinstance(model_loss_normalization, bool):
    return "sum"
  if model_loss_normalization in ("num_total_target_tokens", "per_sequence"):
    return "microbatch_mean"  # exact for the former; per_sequence has near-equal counts per microbatch
  return "tokens"


class Trainer:
  """Builds the sharded train state and the compiled train / eval steps for one mesh."""

  def __init__(self, model: Any, optimizer: Optimizer, mesh: Mesh,
               input_shapes: Mapping[str, tuple[int, ...]],
               input_types: Mapping[str, Any] | None = None, *,
               rules: Sequence[tuple[str, Any]] = partitioning.LOGICAL_AXIS_RULES,
               num_microbatches: int = 1, loss_normalization: str | None = None, seed: int = 0):
    if loss_normalization is None:
      loss_normalization = accumulation_mode(
          getattr(model, "loss_normalization", "num_real_target_tokens"))
    if loss_normalization not in LOSS_NORMALIZATIONS:
      raise ValueError(f"loss_normalization '{loss_normalization}' is not one of {LOSS_NORMALIZATIONS}")
    batch_size = next(iter(input_shapes.values()))[0]
    divisor = partitioning.batch_divisor(mesh, rules) * num_microbatches
    if batch_size % divisor:
      raise ValueError(f"batch size {batch_size} is not a multiple of {divisor} (= mesh batch "
                       f"axes {partitioning.batch_divisor(mesh, rules)} × num_microbatches "
                       f"{num_microbatches}); change BATCH_SIZE or the mesh")
    self.model, self.optimizer, self.mesh, self.rules = model, optimizer, mesh, rules
    self.input_shapes = dict(input_shapes)
    self.input_types = dict(input_types or {})
    self.num_microbatches = num_microbatches
    self.loss_normalization = loss_normalization
    self.rng = jax.random.key(seed)

    abstract = jax.eval_shape(self._init_variables, self.rng)
    self.boxed_params = abstract["params"]
    self.param_shardings = partitioning.tree_shardings(self.boxed_params, mesh, rules)
    self.abstract_params = unbox(self.boxed_params)
    abstract_opt = jax.eval_shape(optimizer.tx.init, self.abstract_params)
    self.opt_shardings = _opt_state_shardings(abstract_opt, self.boxed_params, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    self.state_shardings = TrainState(step=replicated, params=self.param_shardings,
                                      opt_state=self.opt_shardings)
    self.abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=self.abstract_params,
                   opt_state=abstract_opt), self.state_shardings)
    self.batch_shardings = {k: partitioning.batch_sharding(mesh, len(v), rules)
                            for k, v in self.input_shapes.items()}
    self.num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(self.abstract_params))

    self._init = jax.jit(self._partitioned(self._init_state), out_shardings=self.state_shardings)
    self._init_opt = jax.jit(optimizer.tx.init, in_shardings=(self.param_shardings,),
                             out_shardings=self.opt_shardings)
    self.train_step = jax.jit(self._partitioned(self._train_step),
                              in_shardings=(self.state_shardings, self.batch_shardings),
                              out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))
    self.eval_step = jax.jit(self._partitioned(self._eval_step),
                             in_shardings=(self.param_shardings, self.batch_shardings),
                             out_shardings=replicated)

  def _partitioned(self, fn):
    """`fn` traced with the mesh and the logical-axis rules in scope.

    Flax turns the layers' `nn.with_logical_constraint` calls into sharding constraints only when
    both are set while tracing; without them the constraints vanish and GSPMD is left to guess
    activation layouts from the parameters alone (for FSDP it moved activations between chips
    instead of gathering weights).
    """
    def scoped(*args):
      with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh), nn.logical_axis_rules(self.rules):
        return fn(*args)
    scoped.__name__ = fn.__name__
    return scoped

  def _init_variables(self, rng):
    return self.model.get_initial_variables(rng, self.input_shapes, self.input_types or None)

  def _init_state(self, rng):
    params = unbox(self._init_variables(rng)["params"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.optimizer.tx.init(params))

  def init_state(self) -> TrainState:
    """Fresh parameters and optimizer state, created directly in their shardings."""
    with jax.set_mesh(self.mesh):
      return self._init(jax.random.fold_in(self.rng, 0))

  def state_from_params(self, params: Any, step: int = 0) -> TrainState:
    """A train state around given (e.g. warm-start) params, with a fresh optimizer state."""
    params = jax.device_put(params, self.param_shardings)
    with jax.set_mesh(self.mesh):
      opt_state = self._init_opt(params)
    step = jax.device_put(jnp.asarray(step, jnp.int32), self.state_shardings.step)
    return TrainState(step=step, params=params, opt_state=opt_state)

  def _loss_and_grads(self, params, batch, rng):
    """Gradient of loss · w (w per `loss_normalization`), the metrics and w."""
    def weighted(p):
      loss, metrics = self.model.loss_fn(p, batch, rng)
      weight = (metrics["num_tokens"] if self.loss_normalization == "tokens"
                else jnp.ones((), jnp.float32))
      return loss * weight, (metrics, weight)
    (_, (metrics, weight)), grads = jax.value_and_grad(weighted, has_aux=True)(params)
    return grads, metrics, jnp.asarray(weight, jnp.float32)

  def _train_step(self, state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.fold_in(self.rng, 1), state.step)
    n = self.num_microbatches
    if n == 1:
      grads, metrics, weight = self._loss_and_grads(state.params, batch, rng)
      tokens = jnp.asarray(metrics["num_tokens"], jnp.float32)
      sums = jax.tree.map(lambda m: m * tokens, metrics)
    else:
      batch_axes = partitioning.batch_sharding(self.mesh, 2, self.rules).spec[0]
      def split(x):  # microbatch i = rows i, i+n, ... so every device feeds every microbatch
        x = x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(
            x, NamedSharding(self.mesh, PartitionSpec(None, batch_axes)))
      micro = jax.tree.map(split, batch)

      def body(carry, i):
        g_acc, m_acc, w_acc, t_acc = carry
        mb = jax.tree.map(lambda x: x[i], micro)
        g, m, w = self._loss_and_grads(state.params, mb, jax.random.fold_in(rng, i))
        t = jnp.asarray(m["num_tokens"], jnp.float32)
        g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
        m_acc = jax.tree.map(lambda a, b: a + b * t, m_acc, m)
        return (g_acc, m_acc, w_acc + w, t_acc + t), None

      zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
      _, m_shape, _ = jax.eval_shape(self._loss_and_grads, state.params,
                                     jax.tree.map(lambda x: x[0], micro), rng)
      zeros_m = jax.tree.map(lambda m: jnp.zeros(m.shape, jnp.float32), m_shape)
      zero = jnp.zeros((), jnp.float32)
      (grads, sums, weight, tokens), _ = jax.lax.scan(
          body, (zeros_g, zeros_m, zero, zero), jnp.arange(n))
    if self.loss_normalization == "sum":
      weight = jnp.ones((), jnp.float32)
    grads = jax.tree.map(lambda g, p: (g / jnp.maximum(weight, 1e-9)).astype(p.dtype),
                         grads, state.params)
    metrics = {k: v / jnp.maximum(tokens, 1e-9) for k, v in sums.items()}
    metrics["num_tokens"] = tokens
    updates, opt_state = self.optimizer.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["learning_rate"] = jnp.asarray(self.optimizer.learning_rate(state.step), jnp.float32)
    metrics["grad_norm"] = optax.global_norm(grads)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def _eval_step(self, params, batch):
    """Teacher-forced metrics, token-weighted sums so batches can be added up on the host."""
    loss, metrics = self.model.loss_fn(params, batch, None)
    weight = metrics["num_tokens"]
    out = {k: v * weight for k, v in metrics.items() if k != "num_tokens"}
    out["loss"] = loss * weight
    out["num_tokens"] = weight
    return out

  def global_batch(self, host_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's numpy rows → the global, sharded batch the steps take."""
    missing = set(self.input_shapes) - set(host_batch)
    if missing:
      raise KeyError(f"batch lacks features {sorted(missing)}; the model was built for {sorted(self.input_shapes)}")
    return partitioning.host_to_global({k: host_batch[k] for k in self.input_shapes}, self.mesh, self.rules)


def finalize_eval(sums: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """Adds up eval_step outputs and divides by the token count."""
  total: dict[str, float] = {}
  for s in sums:
    for k, v in s.items():
      total[k] = total.get(k, 0.0) + float(v)
  tokens = max(total.get("num_tokens", 0.0), 1e-9)
  return {k: (v if k == "num_tokens" else v / tokens) for k, v in total.items()}


def check_finite(metrics: Mapping[str, Any], step: int, last_checkpoint: int | None) -> None:
  """Raises NonFiniteLossError when a fetched train loss is NaN or infinite."""
  loss = float(metrics["loss"])
  if math.isfinite(loss):
    return
  where = (f"the last good checkpoint (step {last_checkpoint}) is intact and a rerun resumes from it"
           if last_checkpoint is not None else "no checkpoint was written")
  raise NonFiniteLossError(
      f"train loss became {loss} at step {step}; stopped without saving: {where}. Lower the "
      f"learning rate or check the data for that step.")
