"""Both notebooks run top to bottom (nbclient): inference on a tiny random T5 model directory,
finetuning on the demo mixture with a tiny model for a few steps."""
import json
import math
import os

import jax
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from flan_jax import api, gin_utils, model_dir as model_dir_lib

CHECK_MARK = "NOTEBOOK_CHECK "


def _execute(notebook, repo_root):
  NotebookClient(notebook, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(repo_root)}}).execute()
  return "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                 for o in cell.get("outputs", []))


def _check(outputs):
  """The JSON a test's appended last cell printed after CHECK_MARK."""
  return json.loads(outputs.split(CHECK_MARK)[-1].splitlines()[0])


def test_inference_notebook_executes(repo_root, tiny_t5_model_dir, monkeypatch):
  notebook = nbformat.read(repo_root / "notebooks" / "inference.ipynb", as_version=4)
  notebook.cells.append(nbformat.v4.new_code_cell(
      "import json\n"
      "batched = model.generate([cot_prompt], max_decode_length=MAX_DECODE_LENGTH)[0]\n"
      f"print({CHECK_MARK!r} + json.dumps({{'chain': chain, 'batched': batched, 'samples': samples}}))"))
  monkeypatch.setenv("FLAN_JAX_CHECKPOINT", str(tiny_t5_model_dir))
  monkeypatch.setenv("FLAN_JAX_MAX_DECODE_LENGTH", "8")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  outputs = _execute(notebook, repo_root)
  assert "LoadedModel loaded from" in outputs
  assert "extracted answer:" in outputs and "majority:" in outputs
  assert os.path.basename(str(tiny_t5_model_dir)) in outputs
  check = _check(outputs)
  assert check["chain"] == check["batched"]  # a single prompt gives its generation, not a list
  assert isinstance(check["samples"], list) and len(check["samples"]) == 4
  assert all(isinstance(s, str) for s in check["samples"])


def test_finetune_notebook_trains_then_generates_and_scores(repo_root, tmp_path, monkeypatch):
  notebook = nbformat.read(repo_root / "notebooks" / "finetune.ipynb", as_version=4)
  # After the last cell, report what the notebook computed (the notebook itself stays clean).
  notebook.cells.append(nbformat.v4.new_code_cell(
      f"print({CHECK_MARK!r} + json.dumps({{'generations': generations, 'samples': sample_outputs, "
      "'option_scores': option_scores, 'options': [OPTIONS[t] for t, _ in option_examples]}))"))
  out = tmp_path / "run"
  for key, value in {"MODEL_DIR": str(out), "TRAIN_STEPS": "4", "BATCH_SIZE": "8",
                     "MODEL_OVERRIDES": '{"emb_dim": 32, "mlp_dim": 64, "num_heads": 2, "head_dim": 16}',
                     "FEATURE_LENGTHS": '{"inputs": 64, "targets": 16}', "LOG_PERIOD": "1",
                     "EVAL_EXAMPLES": "4", "MAX_DECODE_LENGTH": "8"}.items():
    monkeypatch.setenv(f"FLAN_JAX_{key}", value)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  outputs = _execute(notebook, repo_root)

  assert "demo_compare" in outputs and "[fs_opt]" in outputs and "[zs_cot]" in outputs
  assert model_dir_lib.latest_step(out) == 4
  losses = api.read_metrics(out)["train/loss"]
  assert [step for step, _ in losses] == [1, 2, 3, 4]
  assert all(math.isfinite(loss) for _, loss in losses)
  check = _check(outputs)
  for name in ("untrained", "finetuned"):
    assert len(check["generations"][name]) == 7 * 4
    assert all(isinstance(g, str) for g in check["generations"][name] + check["samples"][name])
    assert check["option_scores"][name], "no prompt with options was scored"
    assert [len(s) for s in check["option_scores"][name]] == [len(o) for o in check["options"]]
    assert all(math.isfinite(s) and s < 0 for row in check["option_scores"][name] for s in row)
  assert check["option_scores"]["untrained"] != check["option_scores"]["finetuned"]


def test_reinitialized_is_where_training_from_scratch_starts(tiny_t5_model_dir):
  from flan_jax import optim, partitioning  # pylint: disable=import-outside-toplevel
  from flan_jax.trainer import Trainer  # pylint: disable=import-outside-toplevel
  loaded = api.load(tiny_t5_model_dir)
  shapes = {k: v.shape for k, v in loaded.model.make_batch([[1]] * 8, [[1]] * 8, 16, 8).items()}
  mesh = partitioning.create_mesh(data=-1)
  trainer = Trainer(loaded.model, optim.adafactor(), mesh, shapes, seed=3)
  start = jax.tree.leaves(trainer.init_state().params)
  fresh = jax.tree.leaves(loaded.reinitialized(seed=3).params)
  assert len(start) == len(fresh)
  for a, b in zip(start, fresh):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not all(np.array_equal(np.asarray(a), np.asarray(b))  # not the checkpoint's weights
                 for a, b in zip(fresh, jax.tree.leaves(loaded.params)))


def test_finetune_names_a_misspelled_macro(tmp_path):
  with pytest.raises(gin_utils.GinConfigError, match="TRAIN_STEP.*Did you mean TRAIN_STEPS"):
    api.finetune(tmp_path / "run", gin_files=["runs/demo.gin"], bindings={"TRAIN_STEP": 3})
  assert not (tmp_path / "run").exists()


def test_remote_model_dir_is_fetched_once_then_loaded(tiny_t5_model_dir, tmp_path):
  """fetch_model_dir reads through etils.epath (gs:// in Colab); a local source takes the same path."""
  local, step = api.fetch_model_dir(str(tiny_t5_model_dir), cache=tmp_path)
  assert step == 0 and model_dir_lib.read_spec(local) == model_dir_lib.read_spec(tiny_t5_model_dir)
  restored = jax.tree.leaves(model_dir_lib.restore_params(local, step))
  for a, b in zip(restored, jax.tree.leaves(model_dir_lib.restore_params(tiny_t5_model_dir, 0))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert api.fetch_model_dir(str(tiny_t5_model_dir), cache=tmp_path) == (local, 0)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint step 7 .*steps there: \[0\]"):
    api.fetch_model_dir(str(tiny_t5_model_dir), step=7, cache=tmp_path)
  with pytest.raises(FileNotFoundError, match="model_spec.json: only flan_jax model directories"):
    api.fetch_model_dir(str(tmp_path), cache=tmp_path)
