"""T5X Adafactor `param_states` → the optax Adafactor state of `flan_jax.optim.adafactor`.

T5X keeps, per parameter, `v` (unfactored second moment, parameter-shaped) or `v_row` / `v_col`
(factored: `v_row` has the column axes averaged away, `v_col` the row axes; batch axes such as a
scanned layer axis stay in both), and `m` (momentum, only with `beta1`). Unused fields are
zeros of shape (1,). The step is `state.step`.

optax (`optax.adafactor`, `scale_by_factored_rms`) factors a parameter of flan_jax's shape over
its two largest axes when the second largest is >= `min_dim_size_to_factor`: `v_row` drops the
largest axis (d0), `v_col` the second largest (d1). Its statistics are the same running means of
squared gradients, so:

- T5X `v` (unfactored) maps exactly: reshaped to flan_jax's shape for an unfactored optax
  statistic, or averaged over d0 / d1 for a factored one (means commute with the running mean).
- T5X `v_row` / `v_col` map exactly (copied) when optax factors the same shape over the same
  axes. Otherwise (e.g. flan_jax keeps attention kernels as [embed, heads, kv] where T5X's are
  [embed, heads*kv]) the second moment is rebuilt as T5X's own estimate
  `v_row * v_col / mean(v_row)` (the one T5X's update divides by) and reduced to optax's layout.
- T5X `m` maps to optax's momentum (`EmaState.ema`, same update rule) when the optimizer has
  momentum; otherwise it is dropped (and reported).
- Every `count` in the optax state (second-moment decay, learning-rate schedule, momentum)
  becomes T5X's step, so decay rates and schedules continue where T5X stopped.

`export_param_states` goes the other way (flan_jax → T5X's unscanned layout) by the same rules.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from typing import Any, Mapping

import jax
import numpy as np
import optax

from flan_jax import optim
from flan_jax.convert import params as params_lib

_STAT_FIELDS = ("v_row", "v_col", "v", "m")


@dataclasses.dataclass(frozen=True)
class Moment:
  """T5X's second moment of one parameter: `v`, or `v_row` / `v_col` factored over `rows` / `cols`."""
  shape: tuple[int, ...]
  v: np.ndarray | None = None
  v_row: np.ndarray | None = None
  v_col: np.ndarray | None = None
  rows: tuple[int, ...] = ()
  cols: tuple[int, ...] = ()

  @property
  def factored(self) -> bool:
    return self.v is None

  def dense(self) -> np.ndarray:
    """The parameter-shaped second moment: `v`, or T5X's estimate from the factors."""
    if not self.factored:
      return self.v
    row_axes = tuple(r - sum(c < r for c in self.cols) for r in self.rows)
    mean = np.expand_dims(self.v_row.mean(axis=row_axes, keepdims=True), self.cols)
    row = np.expand_dims(self.v_row, self.cols)
    col = np.expand_dims(self.v_col, self.rows)
    with np.errstate(divide="ignore", invalid="ignore"):
      return np.where(mean > 0, row * col / np.where(mean > 0, mean, 1), 0).astype(self.v_row.dtype)

  def take(self, axis: int, index: int) -> "Moment":
    """The statistics of slice `index` along batch axis `axis` (one layer of a scanned param)."""
    shape = self.shape[:axis] + self.shape[axis + 1:]
    if not self.factored:
      return Moment(shape, v=np.take(self.v, index, axis=axis))
    drop = lambda dims: tuple(d - (d > axis) for d in dims)  # noqa: E731
    row_axis = axis - sum(c < axis for c in self.cols)  # where the axis sits in v_row / v_col
    col_axis = axis - sum(r < axis for r in self.rows)
    return Moment(shape, v_row=np.take(self.v_row, index, axis=row_axis),
                  v_col=np.take(self.v_col, index, axis=col_axis),
                  rows=drop(self.rows), cols=drop(self.cols))


@dataclasses.dataclass
class ImportedState:
  """The optax state plus a count of how each parameter's statistics were obtained."""
  opt_state: Any
  report: Counter

  def summary(self) -> str:
    return ", ".join(f"{n} {what}" for what, n in sorted(self.report.items()))


def read_moments(param_states: Mapping[str, Any], param_shapes: Mapping[str, tuple[int, ...]],
                 scan_axis: int | None = None) -> tuple[dict[str, Moment], dict[str, np.ndarray]]:
  """T5X `param_states` → (second moments, momenta) by unscanned parameter name.

  Args:
    param_states: T5X's nested `state.param_states`.
    param_shapes: T5X parameter shapes by flat name (scanned names stay `.../layers/...`).
    scan_axis: layer axis of scanned (`.../layers/...`) parameters.
  """
  flat = params_lib.flatten(param_states)
  by_param: dict[str, dict[str, np.ndarray]] = {}
  for name, value in flat.items():
    param, _, field = name.rpartition("/")
    if field in _STAT_FIELDS:
      by_param.setdefault(param, {})[field] = np.asarray(value)
  moments, momenta = {}, {}
  for name, stats in by_param.items():
    if name not in param_shapes:
      raise params_lib.ParamMismatchError(
          f"T5X optimizer state has statistics for {name}, which is not a parameter of the "
          f"checkpoint")
    shape = tuple(param_shapes[name])
    stacked = scan_axis is not None and params_lib.is_stacked(name)
    moment = _moment(name, stats, shape, scan_axis if stacked else None)
    m = stats.get("m")
    m = m if m is not None and m.shape == shape and shape != (1,) else None
    for index in range(shape[scan_axis]) if stacked else [None]:
      key = name if index is None else params_lib.layer_name(name, index)
      if moment is not None:
        moments[key] = moment if index is None else moment.take(scan_axis, index)
      if m is not None:
        momenta[key] = m if index is None else np.take(m, index, axis=scan_axis)
  return moments, momenta


def _moment(name: str, stats: Mapping[str, np.ndarray], shape: tuple[int, ...],
            batch_axis: int | None) -> Moment | None:
  v, v_row, v_col = stats.get("v"), stats.get("v_row"), stats.get("v_col")
  if v is not None and v.shape == shape and (shape != (1,) or v_row is None or v_row.shape == (1,)):
    return Moment(shape, v=v)
  if v_row is None or v_col is None or (v_row.shape == (1,) and v_col.shape == (1,)):
    return None  # no statistics kept for this parameter
  axes = _factor_axes(shape, v_row.shape, v_col.shape, batch_axis)
  if axes is None:
    raise params_lib.ParamMismatchError(
        f"T5X Adafactor state of {name}: v_row {v_row.shape} and v_col {v_col.shape} do not factor "
        f"the parameter's shape {shape}; is the optimizer state from this checkpoint?")
  return Moment(shape, v_row=v_row, v_col=v_col, rows=axes[0], cols=axes[1])


def _factor_axes(shape: tuple[int, ...], row_shape: tuple[int, ...], col_shape: tuple[int, ...],
                 batch_axis: int | None) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
  """(row axes, column axes) consistent with T5X's v_row / v_col shapes.

  Axes are tried as row before column, so a square matrix reads as T5X's heuristic does
  (rows = axis 0, v_row averages axis 1).
  """
  for roles in itertools.product("RCB", repeat=len(shape)):
    if "R" not in roles or "C" not in roles:
      continue
    if batch_axis is not None and roles[batch_axis] != "B":
      continue
    rows = tuple(i for i, r in enumerate(roles) if r == "R")
    cols = tuple(i for i, r in enumerate(roles) if r == "C")
    if (tuple(n for i, n in enumerate(shape) if i not in cols) == tuple(row_shape) and
        tuple(n for i, n in enumerate(shape) if i not in rows) == tuple(col_shape)):
      return rows, cols
  return None


def optax_factored_dims(shape: tuple[int, ...], v_shape: tuple[int, ...]) -> tuple[int, int] | None:
  """(d1, d0) of optax's factored second moment for a parameter; None when its `v` is unfactored.

  Whether optax factors is read from its state (`v` is parameter-shaped when it does not); which
  axes it factors follows optax's rule (the two largest, ties in axis order).
  """
  if len(shape) < 2 or tuple(v_shape) == tuple(shape):
    return None
  return optim.factored_dims(shape, min_dim_size_to_factor=0)


def _refactor(moment: Moment, shape: tuple[int, ...], dims: tuple[int, int] | None, report: Counter
              ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
  """(v_row, v_col, v) for one unscanned parameter of (target) shape `shape`, factored over
  `dims` = (d1, d0) (v_row drops d0, v_col d1) or unfactored (None)."""
  if dims is None:
    _count(report, moment, dims)
    return None, None, moment.dense().reshape(shape)
  d1, d0 = dims
  if moment.factored and moment.shape == shape and moment.rows == (d1,) and moment.cols == (d0,):
    report["factored second moments copied"] += 1
    return moment.v_row, moment.v_col, None
  _count(report, moment, dims)
  dense = moment.dense().reshape(shape)
  return dense.mean(axis=d0), dense.mean(axis=d1), None


def _count(report: Counter, moment: Moment, dims: tuple[int, int] | None) -> None:
  if dims is None:
    report["second moments reconstructed (factored in the source only)" if moment.factored
           else "second moments copied"] += 1
  else:
    report["second moments reconstructed (factored differently)" if moment.factored
           else "second moments averaged onto the target's factors"] += 1


def _layer_moments(name: str, shape: tuple[int, ...],
                   moments: Mapping[str, Moment]) -> list[Moment] | None:
  """Per-layer moments for a flan_jax param (`[layers, ...]` when its name is stacked)."""
  if name in moments:
    return [moments[name]]
  if not params_lib.is_stacked(name):
    return None
  layers = [moments.get(params_lib.layer_name(name, i)) for i in range(shape[0])]
  return None if any(m is None for m in layers) else layers


def _second_moment(name: str, shape: tuple[int, ...], dims: tuple[int, int] | None,
                   moments: Mapping[str, Moment], report: Counter):
  """optax (v_row, v_col, v) for flan_jax param `name`, or None when T5X has no statistics."""
  layers = _layer_moments(name, shape, moments)
  if layers is None:
    return None
  if name in moments:
    return _refactor(layers[0], shape, dims, report)
  per_layer = shape[1:]
  if dims is None or 0 in dims:  # optax factors (or not) across the layer axis: rebuild densely.
    dense = np.stack([m.dense().reshape(per_layer) for m in layers])
    for m in layers:
      _count(report, m, dims)
    if dims is None:
      return None, None, dense
    return dense.mean(axis=dims[1]), dense.mean(axis=dims[0]), None
  outs = [_refactor(m, per_layer, (dims[0] - 1, dims[1] - 1), report) for m in layers]
  return tuple(None if o[0] is None else np.stack(o) for o in zip(*outs))


def build_state(tx: optax.GradientTransformation, params: Any, step: int,
                moments: Mapping[str, Moment], momenta: Mapping[str, np.ndarray]) -> ImportedState:
  """The optax state of `tx` for `params` (flan_jax tree) holding T5X's statistics.

  Parameters without T5X statistics start fresh (zeros), counted in the report.
  """
  abstract = jax.eval_shape(tx.init, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params))
  report: Counter = Counter()
  shapes = {k: tuple(v.shape) for k, v in params_lib.flatten(params).items()}
  found = {"factored": False}

  def zeros_like(tree):
    return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tree)

  def factored_state(node: optax.FactoredState) -> optax.FactoredState:
    found["factored"] = True
    rows, cols, full = (params_lib.flatten(t) for t in (node.v_row, node.v_col, node.v))
    out = {field: {} for field in ("v_row", "v_col", "v")}
    for name, shape in shapes.items():
      dims = optax_factored_dims(shape, full[name].shape)
      values = _second_moment(name, shape, dims, moments, report)
      if values is None:
        report["second moments fresh (no T5X statistics)"] += 1
        values = (None, None, None)
      for field, value, want in zip(out, values, (rows[name], cols[name], full[name])):
        if value is not None and tuple(value.shape) != tuple(want.shape):
          raise params_lib.ParamMismatchError(
              f"T5X Adafactor statistic {field} of {name}: expected shape {tuple(want.shape)} for "
              f"flan_jax's optimizer state, found {tuple(value.shape)}")
        out[field][name] = (np.zeros(want.shape, want.dtype) if value is None
                            else np.asarray(value, want.dtype))
    return optax.FactoredState(count=np.asarray(step, node.count.dtype),
                               **{k: params_lib.unflatten(v) for k, v in out.items()})

  def ema_state(node: optax.EmaState) -> optax.EmaState:
    flat = params_lib.flatten(node.ema)
    ema = {}
    for name, want in flat.items():
      m = momenta.get(name)
      if m is None and params_lib.is_stacked(name):
        layers = [momenta.get(params_lib.layer_name(name, i)) for i in range(want.shape[0])]
        if all(x is not None for x in layers):
          m = np.stack([x.reshape(want.shape[1:]) for x in layers])
      report["momenta copied" if m is not None else "momenta fresh (no T5X momentum)"] += 1
      ema[name] = (np.zeros(want.shape, want.dtype) if m is None
                   else np.asarray(m, want.dtype).reshape(want.shape))
    return optax.EmaState(count=np.asarray(step, node.count.dtype), ema=params_lib.unflatten(ema))

  def fill(node: Any) -> Any:
    if isinstance(node, optax.FactoredState):
      return factored_state(node)
    if isinstance(node, optax.EmaState):
      return ema_state(node)
    if isinstance(node, tuple) and hasattr(node, "_fields"):
      return type(node)(**{f: (np.asarray(step, getattr(node, f).dtype) if f == "count"
                               else fill(getattr(node, f))) for f in node._fields})
    if isinstance(node, (tuple, list)):
      return type(node)(fill(x) for x in node)
    return zeros_like(node)

  opt_state = fill(abstract)
  if not found["factored"]:
    raise ValueError("importing the T5X Adafactor state needs an Adafactor optimizer "
                     "(optim.adafactor); the configured optimizer has no factored second moments")
  if momenta and "momenta copied" not in report:
    report["T5X momenta dropped (optimizer has no momentum)"] += len(momenta)
  return ImportedState(opt_state, report)


def _find(tree: Any, fields: tuple[str, ...]) -> dict[str, Any] | None:
  """The optax sub-state with `fields`, as a dict: a NamedTuple, or the dict Orbax restores it as."""
  if isinstance(tree, tuple) and hasattr(tree, "_fields"):
    if set(tree._fields) == set(fields):
      return tree._asdict()
    tree = tuple(tree)
  if isinstance(tree, dict) and set(tree) == set(fields):
    return tree
  children = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, (tuple, list)) else ()
  return next((found for child in children if (found := _find(child, fields)) is not None), None)


def export_param_states(opt_state: Any, params: Mapping[str, np.ndarray],
                        t5x_shapes: Mapping[str, tuple[int, ...]], min_dim_size_to_factor: int = 128
                        ) -> tuple[dict[str, dict[str, np.ndarray]], Counter]:
  """optax Adafactor state → T5X `param_states` by unscanned T5X name: the reverse of `build_state`.

  Args:
    opt_state: optax state (NamedTuples, or the lists/dicts Orbax restores without a target).
    params: flan_jax params by flat name (either layout).
    t5x_shapes: unscanned T5X parameter shapes (2-D kernels) by name.
    min_dim_size_to_factor: T5X's, for its heuristic factoring of 2-D parameters.
  """
  factored = _find(opt_state, ("count", "v_row", "v_col", "v"))
  if factored is None:
    raise ValueError("the checkpoint's optimizer state has no Adafactor second moments "
                     "(optim.adafactor); export it without --with_optimizer_state")
  rows, cols, full = (params_lib.flatten(factored[k]) for k in ("v_row", "v_col", "v"))
  moments: dict[str, Moment] = {}
  for name, value in params.items():
    shape = tuple(np.shape(value))
    dims = optax_factored_dims(shape, np.shape(full[name]))
    moment = (Moment(shape, v=np.asarray(full[name])) if dims is None else
              Moment(shape, v_row=np.asarray(rows[name]), v_col=np.asarray(cols[name]),
                     rows=(dims[0],), cols=(dims[1],)))
    if not params_lib.is_stacked(name):
      moments[name] = moment
      continue
    for i in range(shape[0]):
      moments[params_lib.layer_name(name, i)] = (
          moment.take(0, i) if dims is None or 0 not in dims
          else Moment(shape[1:], v=np.take(moment.dense(), i, axis=0)))
  ema = _find(opt_state, ("count", "ema"))
  momenta = params_lib.unstack_layers(params_lib.flatten(ema["ema"])) if ema else {}
  report: Counter = Counter()
  out = {}
  one = np.zeros(1, np.float32)
  for name, shape in t5x_shapes.items():
    dims = optim.factored_dims(tuple(shape), min_dim_size_to_factor=min_dim_size_to_factor)
    values = _refactor(moments[name], tuple(shape), dims, report)
    state = {k: one if v is None else np.asarray(v, np.float32)
             for k, v in zip(("v_row", "v_col", "v"), values)}
    state["m"] = np.asarray(momenta[name], np.float32).reshape(shape) if name in momenta else one
    out[name] = state
  return out, report
