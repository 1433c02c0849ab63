"""Checkpointer: restore onto a different mesh, keep policy, data-iterator state, params item."""
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from flan_jax import checkpoints, model_dir, optim, partitioning
from flan_jax.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_trainer import SHAPES, ToyModel, toy_batches  # noqa: E402  pylint: disable=wrong-import-position


def _trainer(mesh_shape):
  return Trainer(ToyModel(), optim.adafactor(1e-2, min_dim_size_to_factor=8),
                 partitioning.create_mesh(*mesh_shape), SHAPES)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Three saved steps of a run on an FSDP mesh (keep=2)."""
  directory = tmp_path_factory.mktemp("ckpt")
  trainer = _trainer((1, 8, 1))
  state = trainer.init_state()
  ckpt = checkpoints.Checkpointer(directory, keep=2)
  for i, batch in enumerate(toy_batches(3)):
    state, _ = trainer.train_step(state, trainer.global_batch(batch))
    ckpt.save(state, {"batches": i + 1, "first_step": 0})
  ckpt.close()
  return directory, jax.device_get(state)


def test_keep_policy_and_latest(trained):
  directory, _ = trained
  ckpt = checkpoints.Checkpointer(directory, keep=2)
  assert ckpt.latest_step() == 3
  assert sorted(ckpt.manager.all_steps()) == [2, 3]
  ckpt.close()


def test_restore_onto_a_different_mesh(trained):
  directory, saved = trained
  trainer = _trainer((2, 1, 4))  # tensor-parallel x data-parallel instead of FSDP
  ckpt = checkpoints.Checkpointer(directory)
  state, data = ckpt.restore(trainer.abstract_state)
  ckpt.close()
  assert data == {"batches": 3, "first_step": 0}
  assert int(state.step) == 3
  assert state.params["wi"].sharding.spec == jax.sharding.PartitionSpec(None, "model")
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), saved.params)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.opt_state), saved.opt_state)
  # The restored state trains on the new mesh.
  state, metrics = trainer.train_step(state, trainer.global_batch(toy_batches(1, seed=9)[0]))
  assert np.isfinite(float(metrics["loss"])) and int(state.step) == 4


def test_training_checkpoints_are_model_dirs(trained):
  """Inference and eval load training runs through model_dir.restore_params (item `params`)."""
  directory, saved = trained
  params = model_dir.restore_params(directory)
  jax.tree.map(np.testing.assert_array_equal, params, saved.params)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  ckpt = checkpoints.Checkpointer(tmp_path)
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    ckpt.restore(_trainer((8, 1, 1)).abstract_state)
  ckpt.close()


def test_model_dir_paths_keep_cloud_urls_and_absolutize_local_ones(tmp_path, monkeypatch):
  """`pathlib.Path('gs://b/run')` would become 'gs:/b/run': MODEL_DIR must stay a URL on TPU VMs."""
  assert str(model_dir.as_path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
  monkeypatch.chdir(tmp_path)
  assert str(model_dir.as_path("runs/x")) == str(tmp_path / "runs" / "x")
