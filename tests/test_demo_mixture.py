"""The demo mixture through SeqIO: vocabulary, splits, metadata, metrics, registry, README example."""
import concurrent.futures
import itertools
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import seqio

from flan_jax.data import demo_generators
from flan_jax.data import registry
from flan_jax.data import templates
from flan_jax.data import vocab
from flan_jax.mixtures import demo as demo_mixture
from flan_jax.tasks import demo


@pytest.fixture(scope="module")
def validation_sets():
  out = {}
  for name in demo.DEMO_TASKS:
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(demo.DEMO_TASK_FEATURE_LENGTHS, split="validation", shuffle=False)
    out[name] = list(ds.as_numpy_iterator())
  return out


def test_demo_vocabulary_is_cached_and_deterministic(tmp_path, monkeypatch):
  vocabulary = vocab.demo_vocabulary()
  assert vocabulary.vocab_size == vocab.DEMO_VOCAB_SIZE + vocab.EXTRA_IDS
  assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)
  text = "Which number is larger, 17 or 503?"
  assert vocabulary.decode(vocabulary.encode(text)) == text
  cached = vocab.demo_vocabulary_path()
  assert cached.parent.parent == vocab.cache_dir()
  # A cold cache elsewhere trains the same model bytes and leaves no temporary files behind.
  monkeypatch.setenv(vocab.CACHE_DIR_ENV, str(tmp_path))
  fresh = vocab.demo_vocabulary_path()
  assert fresh.parent.parent == tmp_path and fresh.name == cached.name
  assert fresh.read_bytes() == cached.read_bytes()
  assert os.listdir(fresh.parent) == [fresh.name]


def test_concurrent_cold_cache_writers_leave_one_whole_file(tmp_path, monkeypatch):
  expected = vocab.demo_vocabulary_path().read_bytes()
  monkeypatch.setenv(vocab.CACHE_DIR_ENV, str(tmp_path))
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    paths = list(pool.map(lambda _: vocab.demo_vocabulary_path(), range(3)))
  assert len(set(paths)) == 1 and paths[0].parent.parent == tmp_path
  assert paths[0].read_bytes() == expected
  assert os.listdir(paths[0].parent) == [paths[0].name]


def test_t5_vocabulary(t5_vocab_path, monkeypatch):
  assert vocab.t5_vocabulary(t5_vocab_path).vocab_size == 32100
  monkeypatch.setenv(vocab.T5_VOCAB_ENV, "/nonexistent/spiece.model")
  with pytest.raises(FileNotFoundError, match="does not exist.*FLAN_JAX_T5_VOCAB"):
    vocab.t5_vocabulary()


def test_tasks_load_through_seqio_with_metadata_and_short_sequences(validation_sets):
  vocabulary = vocab.demo_vocabulary()
  for name, examples in validation_sets.items():
    assert len(examples) > 150, name
    types = {e["_template_type"].decode() for e in examples}
    family = demo_generators.FAMILIES[name[len("demo_"):]]
    assert types == set(family.template_types), name
    assert {int(e["_template_idx"]) for e in examples} == set(range(10)), name
    for e in examples:
      assert e["_task_name"].decode() == name and e["_task_source"] == b"demo"
      assert len(e["inputs"]) <= demo.DEMO_TASK_FEATURE_LENGTHS["inputs"]
      assert len(e["targets"]) <= demo.DEMO_TASK_FEATURE_LENGTHS["targets"]
      assert e["targets"][-1] == vocabulary.eos_id
      assert vocabulary.decode(e["targets"].tolist()) == e["targets_pretokenized"].decode()
    fits = np.mean([len(e["inputs"]) < demo.DEMO_TASK_FEATURE_LENGTHS["inputs"] for e in examples])
    assert fits > 0.97, name  # only rare inputs are trimmed


def test_documented_chance_is_the_majority_answer_rate(validation_sets):
  for name, examples in validation_sets.items():
    answers = [templates.extract_answer(e["targets_pretokenized"].decode()) for e in examples]
    majority = max(answers.count(a) for a in set(answers)) / len(answers)
    assert abs(majority - demo.CHANCE[name]) < 0.03, (name, majority)


def test_validation_is_disjoint_from_train_and_deterministic():
  for family in demo_generators.FAMILIES.values():
    keys = lambda examples: {tuple(e[f] for f in family.key_fields) for e in examples}
    train = keys(itertools.islice(demo_generators.generate(family, "train"), 20000))
    validation = list(itertools.islice(demo_generators.generate(family, "validation"), 200))
    assert not train & keys(validation), family.name
    again = list(itertools.islice(demo_generators.generate(family, "validation"), 200))
    assert validation == again


def test_shuffled_train_stream_is_deterministic_for_a_seed():
  task = seqio.get_mixture_or_task("demo_parity")

  def first(seed):
    ds = task.get_dataset(demo.DEMO_TASK_FEATURE_LENGTHS, split="train", shuffle=True, seed=seed)
    return [e["inputs_pretokenized"] for e in itertools.islice(ds.as_numpy_iterator(), 20)]

  assert first(5) == first(5)
  assert first(5) != first(6)


def test_metrics_score_gold_as_one_and_cot_on_the_final_answer(validation_sets):
  for name, examples in validation_sets.items():
    task = seqio.get_mixture_or_task(name)
    targets = [e["targets_pretokenized"].decode() for e in examples]
    for metric in task.metric_fns:
      assert metric(targets, targets) == {"accuracy": 1.0}
      assert metric(targets, ["?"] * len(targets)) == {"accuracy": 0.0}
  cot = seqio.get_mixture_or_task("demo_arithmetic").metric_fns[0]
  gold = ["Ana starts with 3. 3 + 4 = 7. So the answer is 7.", "5"]
  assert cot(gold, ["I guess. The answer is 7.", "5"]) == {"accuracy": 1.0}
  assert cot(gold, ["3 + 4 = 7. So the answer is 8.", "5"]) == {"accuracy": 0.5}


def test_seqio_evaluator_reports_per_task_accuracy():
  evaluator = seqio.Evaluator(
      mixture_or_task_name="demo", feature_converter=seqio.EncDecFeatureConverter(pack=False),
      eval_split="validation", sequence_length=demo.DEMO_TASK_FEATURE_LENGTHS,
      num_examples=24, async_compute_metrics=False)

  def gold_predict_fn(dataset):
    return [(i, ex["decoder_target_tokens"]) for i, ex in dataset.as_numpy_iterator()]

  metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=gold_predict_fn)
  assert metrics.result() == {name: {"accuracy": 1.0} for name in demo.DEMO_TASKS}


def test_mixture_and_registry():
  mixture = registry.get_mixture_or_task("demo")
  assert sorted(t.name for t in mixture.tasks) == sorted(demo.DEMO_TASKS)
  assert demo_mixture.DEMO_RATES == {
      "demo_compare": 2.0, "demo_sentiment": 2.0, "demo_parity": 2.0, "demo_boolean": 2.0,
      "demo_sort": 1.0, "demo_count": 1.0, "demo_arithmetic": 1.0}
  dataset = mixture.get_dataset(demo.DEMO_TASK_FEATURE_LENGTHS, split="train", shuffle=False,
                                seed=3, passthrough_features=["_task_name"])
  names = {e["_task_name"].decode() for e in itertools.islice(dataset.as_numpy_iterator(), 120)}
  assert len(names) >= 5
  registry.ensure_registered()  # idempotent
  assert "flan_jax.tasks.demo" in registry.registered_modules()
  with pytest.raises(ValueError, match=r"Unknown task or mixture 'demo_comparison'\. "
                                       r"Did you mean: demo_compare"):
    registry.get_mixture_or_task("demo_comparison")


def test_readme_example_runs(repo_root):
  readme = (repo_root / "README.md").read_text(encoding="utf-8")
  section = readme.split("## Data: templates and the demo mixture", 1)[1].split("\n## ", 1)[0]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=repo_root)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "demo_compare" in result.stdout and "_template_type" in result.stdout


def test_generated_splits_are_cached_on_disk_and_read_back_identically(tmp_path, monkeypatch):
  monkeypatch.setenv(vocab.CACHE_DIR_ENV, str(tmp_path))
  demo.split_columns.cache_clear()
  try:
    generated = demo.split_columns("compare", "validation")
    (path,) = (tmp_path / "demo_data").iterdir()
    assert path.name.startswith("compare-validation-") and path.suffix == ".npz"
    demo.split_columns.cache_clear()
    from_disk = demo.split_columns("compare", "validation")
  finally:
    demo.split_columns.cache_clear()
  expected = list(itertools.islice(
      demo_generators.generate(demo_generators.FAMILIES["compare"], "validation", demo.DEMO_SEED),
      demo.NUM_EXAMPLES["validation"]))
  for columns in (generated, from_disk):
    assert columns["first"].tolist() == [e["first"] for e in expected]
    assert columns["options"].tolist() == [e["options"] for e in expected]
    assert columns["answer"].tolist() == [e["answer"] for e in expected]
