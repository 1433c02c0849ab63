"""T5X import beyond plain params: the Adafactor state, scanned layers, and Orbax's OCDBT layout.

The fixtures start from the real legacy tiny T5X checkpoint and give it non-zero Adafactor
statistics in T5X's layouts (its own are zeros at step 0), so a mapping error shows.
"""
import re

import numpy as np
import pytest
from flax import serialization

from conftest import require_shared_data
from flan_jax import optim
from flan_jax.convert import adafactor_state, core, t5x
from flan_jax.convert import params as params_lib

STEP = 7
LR = 1e-2
# T5X run with min_dim_size_to_factor=8 factors the tiny 2-D kernels; logits_dense keeps a full v
# so that the "T5X unfactored, optax factored" mapping is exercised too.
UNFACTORED = "decoder/logits_dense/kernel"


def _optimizer():
  return optim.adafactor(learning_rate=LR, min_dim_size_to_factor=8)


def _t5x_factors(shape):
  """T5X's heuristic rows / cols for a 2-D parameter (min_dim_size_to_factor=8), else None."""
  if len(shape) != 2 or min(shape) < 8:
    return None
  order = np.argsort(shape)
  return (int(order[-2]),), (int(order[-1]),)


def _synthetic_states(flat_params, seed=0):
  """T5X-layout Adafactor statistics (positive, random) for unscanned params, and their factors."""
  rng = np.random.default_rng(seed)
  states, factors = {}, {}
  for name, p in flat_params.items():
    one = np.zeros(1, np.float32)
    state = {"m": one, "v": one, "v_row": one, "v_col": one}
    axes = None if name == UNFACTORED else _t5x_factors(p.shape)
    if axes is None:
      state["v"] = rng.uniform(0.5, 2.0, p.shape).astype(np.float32)
    else:
      rows, cols = axes
      v_row = rng.uniform(0.5, 2.0, np.delete(p.shape, cols))
      v_col = rng.uniform(0.5, 2.0, np.delete(p.shape, rows))
      # Both are running means of the same squared gradients: their means agree, as in T5X.
      state["v_row"] = v_row.astype(np.float32)
      state["v_col"] = (v_col * v_row.mean() / v_col.mean()).astype(np.float32)
      factors[name] = axes
    states[name] = state
  return states, factors


def _write_legacy(path, flat_params, flat_states, step):
  tree = {"version": 3, "optimizer": {
      "target": params_lib.unflatten(flat_params),
      "state": {"step": np.int32(step), "param_states": params_lib.unflatten(
          {f"{k}/{f}": v for k, s in flat_states.items() for f, v in s.items()})}}}
  path.write_bytes(serialization.msgpack_serialize(tree))
  return path


def _scan(flat_params, flat_states, factors):
  """T5X's scanned layout (`x/layers/...`, layer axis 1) of unscanned params and statistics."""
  groups = {}
  for name in flat_params:
    parts = name.split("/")
    layer = next((i for i, p in enumerate(parts) if p.startswith("layers_")), None)
    key = name if layer is None else "/".join(parts[:layer] + ["layers"] + parts[layer + 1:])
    groups.setdefault(key, []).append(name)
  params, states = {}, {}
  for key, names in groups.items():
    if names == [key]:  # not a layer parameter
      params[key], states[key] = flat_params[key], flat_states[key]
      continue
    names = sorted(names, key=lambda n: int(n.split("layers_")[1].split("/")[0]))
    params[key] = np.stack([flat_params[n] for n in names], axis=1)
    rows, cols = factors.get(names[0], ((), ()))
    rows_s, cols_s = tuple(r + (r >= 1) for r in rows), tuple(c + (c >= 1) for c in cols)
    one = np.zeros(1, np.float32)
    if names[0] in factors:
      states[key] = {"m": one, "v": one,
                     "v_row": np.stack([flat_states[n]["v_row"] for n in names], axis=1 - (0 in cols_s)),
                     "v_col": np.stack([flat_states[n]["v_col"] for n in names], axis=1 - (0 in rows_s))}
    else:
      states[key] = {"m": one, "v_row": one, "v_col": one,
                     "v": np.stack([flat_states[n]["v"] for n in names], axis=1)}
  return params, states


def _dense(v_row, v_col, rows, cols):
  """T5X's second-moment estimate for a 2-D parameter, written out by hand."""
  row = v_row[:, None] if cols == (1,) else v_row[None, :]
  col = v_col[None, :] if rows == (0,) else v_col[:, None]
  return row * col / v_row.mean()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  ckpt = require_shared_data("t5x_checkpoints", "test_t5_tiny.checkpoint_0")
  flat = {k: np.asarray(v) for k, v in params_lib.flatten(t5x.read_checkpoint(ckpt).params).items()}
  states, factors = _synthetic_states(flat)
  path = _write_legacy(tmp_path_factory.mktemp("t5x") / f"checkpoint_{STEP}", flat, states, STEP)
  return {"path": path, "params": flat, "states": states, "factors": factors}


@pytest.fixture(scope="module")
def resumed(source, tmp_path_factory, t5_vocab_path):
  """The synthetic checkpoint converted with its optimizer state, restored the way train.py resumes."""
  import jax
  from flan_jax import checkpoints, model_dir, models, partitioning
  from flan_jax.trainer import Trainer
  out = tmp_path_factory.mktemp("converted")
  loaded = core.load_t5x(source["path"], vocab_path=t5_vocab_path, with_optimizer_state=True,
                         optimizer=_optimizer(), dtype="float32", dropout_rate=0.0)
  core.save_flax(loaded, out)
  model = models.build_model(model_dir.read_spec(out), out)
  mesh = partitioning.create_mesh(1, 1, 1, devices=jax.devices()[:1])
  shapes = {"encoder_input_tokens": (2, 8), "decoder_input_tokens": (2, 4),
            "decoder_target_tokens": (2, 4), "decoder_loss_weights": (2, 4)}
  trainer = Trainer(model, _optimizer(), mesh, shapes)
  ckpt = checkpoints.Checkpointer(out, async_save=False)
  state, data_state = ckpt.restore(trainer.abstract_state)
  ckpt.close()
  return {"loaded": loaded, "trainer": trainer, "model": model, "state": state,
          "data_state": data_state, "dir": out}


def _factored_state(opt_state):
  import optax
  return next(s for s in opt_state if isinstance(s, optax.FactoredState))


def test_imported_statistics_equal_the_source(source, resumed):
  state, states, factors = resumed["state"], source["states"], source["factors"]
  assert int(state.step) == STEP and resumed["data_state"] == {"batches": 0, "first_step": STEP}
  fs = _factored_state(state.opt_state)
  assert int(fs.count) == STEP and int(state.opt_state[2].count) == STEP  # decay and LR schedule
  v_row, v_col, v = (params_lib.flatten(t) for t in (fs.v_row, fs.v_col, fs.v))
  # Same shape, same factored axes in T5X and optax: copied bit for bit.
  for name in ["token_embedder/embedding", "encoder/layers_1/mlp/wi_0/kernel",
               "decoder/layers_0/mlp/wo/kernel"]:
    np.testing.assert_array_equal(v_row[name], states[name]["v_row"], err_msg=name)
    np.testing.assert_array_equal(v_col[name], states[name]["v_col"], err_msg=name)
  # Unfactored in both: copied.
  for name in ["encoder/encoder_norm/scale", "decoder/relpos_bias/rel_embedding"]:
    np.testing.assert_array_equal(v[name], states[name]["v"], err_msg=name)
  # T5X factors [embed, heads*kv]; flan_jax's [embed, heads, kv] is unfactored in optax: T5X's estimate.
  name = "encoder/layers_0/attention/query/kernel"
  expected = _dense(states[name]["v_row"], states[name]["v_col"], *factors[name])
  np.testing.assert_allclose(v[name], expected.reshape(8, 4, 3), rtol=1e-6)
  name = "decoder/layers_1/self_attention/out/kernel"  # [heads*kv, embed] → [heads, kv, embed]
  expected = _dense(states[name]["v_row"], states[name]["v_col"], *factors[name])
  np.testing.assert_allclose(v[name], expected.reshape(4, 3, 8), rtol=1e-6)
  # T5X unfactored, optax factored (two largest axes): exact means of v.
  np.testing.assert_allclose(v_row[UNFACTORED], states[UNFACTORED]["v"].mean(axis=1), rtol=1e-6)
  np.testing.assert_allclose(v_col[UNFACTORED], states[UNFACTORED]["v"].mean(axis=0), rtol=1e-6)
  assert "factored second moments copied" in resumed["loaded"].opt_report


def _adafactor_by_hand(p, g, step, v=None, v_row=None, v_col=None):
  """T5X's Adafactor update (no momentum, clipping 1, parameter scale), in float64 numpy."""
  p, g = p.astype(np.float64), g.astype(np.float64)
  decay = 1.0 - (step + 1.0) ** -0.8
  g2 = g * g + 1e-30
  if v is None:  # factored over rows (axis 0) / columns (axis 1)
    v_row = decay * v_row + (1 - decay) * g2.mean(axis=1)
    v_col = decay * v_col + (1 - decay) * g2.mean(axis=0)
    y = g / np.sqrt(v_row[:, None] / v_row.mean() * v_col[None, :])
  else:
    y = g / np.sqrt(decay * v + (1 - decay) * g2)
  y /= max(1.0, np.sqrt(np.mean(y * y)))
  return p - LR * max(np.sqrt(np.mean(p * p)), 1e-3) * y


def test_one_optimizer_step_from_the_imported_state_is_t5x_adafactor(source, resumed):
  import jax
  trainer, state = resumed["trainer"], resumed["state"]
  rng = np.random.default_rng(1)
  grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), jax.device_get(state.params))

  @jax.jit
  def step(opt_state, params):  # what Trainer.train_step does once it has the gradients
    updates, _ = trainer.optimizer.tx.update(grads, opt_state, params)
    return jax.tree.map(lambda p, u: p + u, params, updates)

  params = params_lib.flatten(jax.device_get(state.params))
  new = params_lib.flatten(step(state.opt_state, state.params))
  fresh_state = jax.device_put(trainer.optimizer.tx.init(state.params), trainer.opt_shardings)
  fresh = params_lib.flatten(step(fresh_state, state.params))  # same shardings: no recompile
  grads, states = params_lib.flatten(grads), source["states"]
  name = "encoder/layers_0/mlp/wi_0/kernel"  # factored (rows 0, cols 1) in T5X and in optax
  expected = _adafactor_by_hand(params[name], grads[name], STEP, v_row=states[name]["v_row"],
                                v_col=states[name]["v_col"])
  np.testing.assert_allclose(new[name], expected, rtol=1e-5, atol=1e-7)
  # A fresh optimizer state (zero statistics at count 0) takes a visibly different step.
  assert np.abs(fresh[name] - new[name]).max() > 0.1 * np.abs(new[name] - params[name]).max()
  name = "encoder/encoder_norm/scale"  # unfactored
  expected = _adafactor_by_hand(params[name], grads[name], STEP, v=states[name]["v"])
  np.testing.assert_allclose(new[name], expected, rtol=1e-5, atol=1e-7)


def test_readme_optimizer_state_and_t5x_export_commands(tmp_path, capsys, monkeypatch, source):
  """The README's second block on the real legacy checkpoint (zero statistics, step 0): import
  with the optimizer state, then export back to T5X's scanned layout."""
  from conftest import REPO_ROOT
  from flan_jax.convert import __main__ as cli
  require_shared_data("t5_vocab", "t5_spiece.model")
  section = (REPO_ROOT / "README.md").read_text().split("## Converting checkpoints", 1)[1].split("\n## ", 1)[0]
  block = re.findall(r"```bash\n(.*?)```", section, re.S)[1]
  commands = [c.replace("$OUT", str(tmp_path)).split() for c in block.splitlines()
              if c.startswith("python -m flan_jax.convert")]
  assert [c[3] for c in commands] == ["t5x-to-flax", "flax-to-t5x"]
  monkeypatch.chdir(REPO_ROOT)  # the README's relative ../shared/data paths
  for command in commands:
    assert cli.main(command[3:]) == 0, command
  printed = capsys.readouterr().out
  assert "optimizer state at step 0: 52 second moments copied" in printed, printed
  step_dir = tmp_path / "t5_tiny_resume" / "checkpoints" / "0"
  assert sorted(p.name for p in step_dir.iterdir() if p.is_dir()) == ["data_iter", "opt_state", "params"]
  exported = t5x.read_checkpoint(tmp_path / "t5_tiny_t5x")
  assert exported.layout == "legacy" and exported.step == 0
  scanned, _ = _scan(source["params"], source["states"], source["factors"])
  got = params_lib.flatten(exported.params)
  assert set(got) == set(scanned)
  for name, value in scanned.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_t5x_to_flax_to_t5x_is_bit_identical(source, resumed, tmp_path):
  folder = core.save_t5x(resumed["loaded"], tmp_path)
  assert folder.name == f"checkpoint_{STEP}"
  exported = t5x.read_checkpoint(tmp_path)
  assert exported.step == STEP
  got = params_lib.flatten(exported.params)
  assert set(got) == set(source["params"])
  for name, value in source["params"].items():
    assert got[name].shape == value.shape and got[name].dtype == value.dtype, name
    np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_flax_to_t5x_exports_the_adafactor_state(source, resumed, tmp_path):
  core.flax_to_t5x(resumed["dir"], tmp_path, with_optimizer_state=True, min_dim_size_to_factor=8)
  exported = t5x.read_checkpoint(tmp_path)
  assert exported.step == STEP
  flat = params_lib.flatten(exported.param_states)
  for name, fields in source["states"].items():
    if name == UNFACTORED:  # T5X's heuristic factors it on export, from optax's factors
      np.testing.assert_allclose(flat[f"{name}/v_row"], fields["v"].mean(axis=1), rtol=1e-6)
      assert flat[f"{name}/v"].shape == (1,)
      continue
    for field, value in fields.items():
      if "attention/" in name and field in ("v_row", "v_col"):  # via optax's unfactored estimate
        np.testing.assert_allclose(flat[f"{name}/{field}"], value, rtol=1e-5, err_msg=name)
      else:  # copied both ways
        np.testing.assert_array_equal(flat[f"{name}/{field}"], value, err_msg=f"{name}/{field}")
  with pytest.raises(ValueError, match="export the optimizer state unscanned"):
    core.flax_to_t5x(resumed["dir"], tmp_path / "s", with_optimizer_state=True, scanned=True)


def test_momentum_maps_and_missing_momentum_is_reported(source):
  import optax
  flat = {"w": np.ones((16, 8), np.float32)}
  m = np.arange(128, dtype=np.float32).reshape(16, 8)
  moments, momenta = adafactor_state.read_moments(
      {"w": {"v": np.full((16, 8), 2.0, np.float32), "m": m, "v_row": np.zeros(1), "v_col": np.zeros(1)}},
      {"w": (16, 8)})
  with_momentum = adafactor_state.build_state(optim.adafactor(momentum=0.9).tx, flat, 3, moments, momenta)
  ema = next(s for s in with_momentum.opt_state if isinstance(s, optax.EmaState))
  np.testing.assert_array_equal(ema.ema["w"], m)
  assert int(ema.count) == 3
  without = adafactor_state.build_state(optim.adafactor().tx, flat, 3, moments, momenta)
  assert "1 T5X momenta dropped (optimizer has no momentum)" in without.summary()


def test_statistics_that_do_not_fit_name_the_parameter(source):
  states = {"w": {"v": np.zeros(1), "v_row": np.ones(5), "v_col": np.ones(8), "m": np.zeros(1)}}
  with pytest.raises(params_lib.ParamMismatchError,
                     match=r"T5X Adafactor state of w: v_row \(5,\) and v_col \(8,\) do not factor "
                           r"the parameter's shape \(16, 8\)"):
    adafactor_state.read_moments(states, {"w": (16, 8)})
  with pytest.raises(ValueError, match="needs an Adafactor optimizer"):
    adafactor_state.build_state(optim.adamw().tx, {"w": np.ones((16, 8), np.float32)}, 0, {}, {})


@pytest.fixture(scope="module")
def scanned_path(source, tmp_path_factory):
  params, states = _scan(source["params"], source["states"], source["factors"])
  assert params["encoder/layers/mlp/wi_0/kernel"].shape == (8, 2, 16)
  assert states["encoder/layers/mlp/wi_0/kernel"]["v_row"].shape == (8, 2)
  return _write_legacy(tmp_path_factory.mktemp("scanned") / f"checkpoint_{STEP}", params, states, STEP)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_scanned_t5x_checkpoint_imports_into_either_layout(source, resumed, scanned_path, scan_layers):
  reference = resumed["loaded"]
  loaded = core.load_t5x(scanned_path, with_optimizer_state=True, optimizer=_optimizer(),
                         dtype="float32", dropout_rate=0.0, scan_layers=scan_layers)
  got, want = params_lib.flatten(loaded.params), params_lib.flatten(reference.params)
  if scan_layers:
    assert got["encoder/layers/attention/query/kernel"].shape == (2, 8, 4, 3)
    got = params_lib.unstack_layers(got)
  assert set(got) == set(want)
  for name, value in want.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)
  for field in ("v_row", "v_col", "v"):
    got = params_lib.flatten(getattr(_factored_state(loaded.opt_state), field))
    want = params_lib.flatten(getattr(_factored_state(reference.opt_state), field))
    if scan_layers:
      got = params_lib.unstack_layers(got)
    for name, value in want.items():
      if value.shape != (1,):  # (1,): the placeholder of the other representation
        np.testing.assert_array_equal(got[name], value, err_msg=f"{field} {name}")


def test_scanned_checkpoint_with_the_wrong_scan_axis_is_a_clear_error(scanned_path):
  with pytest.raises(params_lib.ParamMismatchError,
                     match=r"scanned T5X params under 'decoder' disagree on the number of layers "
                           r"along axis 0 \(.*\); pass --t5x_param_scan_axis"):
    core.load_t5x(scanned_path, param_scan_axis=0)


def test_orbax_ocdbt_checkpoint_written_by_orbax_imports(source, resumed, tmp_path):
  import orbax.checkpoint as ocp
  tree = {"_optimizer": {
      "target": params_lib.unflatten(source["params"]),
      "state": {"step": np.int32(STEP), "param_states": params_lib.unflatten(
          {f"{k}/{f}": v for k, s in source["states"].items() for f, v in s.items()})}}}
  ocp.PyTreeCheckpointer().save(tmp_path / f"checkpoint_{STEP}", tree)
  assert (tmp_path / f"checkpoint_{STEP}" / "manifest.ocdbt").exists()
  assert t5x.detect_layout(tmp_path) == "orbax_ocdbt"
  loaded = core.load_t5x(tmp_path, with_optimizer_state=True, optimizer=_optimizer(),
                         dtype="float32", dropout_rate=0.0)
  assert loaded.step == STEP
  reference = resumed["loaded"]
  for name, value in params_lib.flatten(reference.params).items():
    np.testing.assert_array_equal(params_lib.flatten(loaded.params)[name], value, err_msg=name)
  for name, value in params_lib.flatten(_factored_state(reference.opt_state).v).items():
    np.testing.assert_array_equal(params_lib.flatten(_factored_state(loaded.opt_state).v)[name], value)
