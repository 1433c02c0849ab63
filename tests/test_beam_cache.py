"""Caching a real task (300 GSM8K rows as CoT) with SeqIO's Beam pipeline and reading it back."""
import sys
import textwrap

import numpy as np
import pytest
import seqio

from conftest import require_shared_data
from flan_jax.data import cache

LENGTHS = {"inputs": 2048, "targets": 512}
MODULE = textwrap.dedent("""
    from flan_jax.data import sources, templates, user_tasks
    from flan_jax.tasks import cot

    def first_rows(dataset):
      return dataset.take(300)

    user_tasks.register_task(
        "cachetest_gsm8k", sources.gsm8k_source({folder!r}), cot.COT_FAMILY, ("zs_cot",),
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
