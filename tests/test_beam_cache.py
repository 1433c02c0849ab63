"""Caching a real task (300 GSM8K rows as CoT) with SeqIO's Beam pipeline, reading it back, and
training from it with `train.use_cached=True`."""
import sys
import textwrap

import gin
import numpy as np
import pytest
import seqio

from conftest import require_shared_data
from flan_jax import gin_utils
from flan_jax.data import cache
from flan_jax.data import formatting
from flan_jax.train import train

LENGTHS = {"inputs": 2048, "targets": 512}
MODULE = textwrap.dedent("""
    from flan_jax.data import sources, templates, user_tasks
    from flan_jax.tasks import cot

    def first_rows(dataset):
      return dataset.take(300)

    # Only the zs_cot variant gets cached; fs_cot stays uncached.
    user_tasks.register_task(
        "cachetest_gsm8k", sources.gsm8k_source({folder!r}), cot.COT_FAMILY, ("zs_cot", "fs_cot"),
        collection="test", row_preprocessors=(first_rows,))
""")


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
  folder = require_shared_data("gsm8k")
  root = tmp_path_factory.mktemp("beam")
  (root / "cachetest_tasks.py").write_text(MODULE.format(folder=str(folder)))
  sys.path.insert(0, str(root))
  import cachetest_tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  env = {**__import__("os").environ,
         "PYTHONPATH": f"{root}:{__import__('os').environ.get('PYTHONPATH', '')}"}
  output_dir = str(root / "cache")
  tasks = cache.cache(["cachetest_gsm8k_zs_cot"], output_dir, modules=["cachetest_tasks"],
                      env=env)
  yield tasks, output_dir
  sys.path.remove(str(root))


def test_cached_task_reads_back_like_the_live_one(cached):
  tasks, output_dir = cached
  assert tasks == ["cachetest_gsm8k_zs_cot"]
  cache.use_cache_dir(output_dir)
  task = seqio.get_mixture_or_task("cachetest_gsm8k_zs_cot")
  from_cache = list(task.get_dataset(LENGTHS, split="train", shuffle=False, use_cached=True)
                    .as_numpy_iterator())
  live = list(task.get_dataset(LENGTHS, split="train", shuffle=False).as_numpy_iterator())
  assert len(from_cache) == len(live) == 300
  key = lambda e: e["inputs"].tobytes()  # the cache may store examples in another order
  for cached_example, live_example in zip(sorted(from_cache, key=key), sorted(live, key=key)):
    np.testing.assert_array_equal(cached_example["inputs"], live_example["inputs"])
    np.testing.assert_array_equal(cached_example["targets"], live_example["targets"])
    assert cached_example["targets"][-1] == 1
  assert task.get_cached_stats("train")["examples"] == 300


def test_cache_names_a_failing_job(tmp_path):
  with pytest.raises(ValueError, match="Unknown task or mixture 'no_such_task_xyz'"):
    cache.cache(["no_such_task_xyz"], str(tmp_path))


def _train_from_cache(model_dir, cache_dirs, steps=2):
  gin.clear_config()
  bindings = [f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {steps}", "BATCH_SIZE = 8",
              "MIXTURE_OR_TASK_NAME = 'cachetest_gsm8k_zs_cot'",
              "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 32}", "train.eval_batches = 0",
              "train.use_cached = True", f"train.cache_dirs = {list(cache_dirs)!r}",
              "configs.model_config.overrides = {'num_encoder_layers': 1, 'num_decoder_layers': 1}"]
  try:
    gin_utils.parse_gin(["models/flan_t5_tiny.gin", "runs/finetune.gin"], bindings)
    return train(print_fn=lambda _: None)
  finally:
    gin.clear_config()


def test_missing_cache_names_the_task_and_the_command(cached):
  del cached  # registers the task
  with pytest.raises(cache.CacheMissingError,
                     match=r"Task 'cachetest_gsm8k_fs_cot' is not cached in .*"
                           r"python -m flan_jax\.data\.cache cachetest_gsm8k_fs_cot "
                           r"--output_dir=DIR.*train\.cache_dirs"):
    cache.require_cached("cachetest_gsm8k_fs_cot", ["train"])
  with pytest.raises(cache.CacheMissingError, match="'demo_parity' cannot be read from a cache"):
    cache.require_cached("demo_parity", ["train"])


def test_train_reads_the_cache_without_preprocessing(cached, tmp_path, monkeypatch):
  _, output_dir = cached

  def no_live_rendering(*args, **kwargs):
    raise AssertionError("use_cached=True must not render templates")

  monkeypatch.setattr(formatting.Formatter, "format", no_live_rendering)
  _train_from_cache(tmp_path / "run", [output_dir])
  from flan_jax import model_dir  # pylint: disable=import-outside-toplevel
  assert model_dir.latest_step(tmp_path / "run") == 2
