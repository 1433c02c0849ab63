"""Every Flan 2021 task against its real TFDS builder, offline.

Nothing downloads here, so each TFDS task is read under `tfds.testing.mock_data` with the
`USE_CODE` policy: the builder's own code gives the feature spec (names, nesting, ClassLabel
vocabularies) and random examples of that spec stand in for the data. A wrong feature name,
config, version or split fails when the dataset is built or mapped; label vocabularies are compared
with the builder's ClassLabel sizes. The three locally derived tasks are rendered from a row of
their JSONL layout.
"""
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from flan_jax.data import templates
from flan_jax.data import vocab as vocab_lib
from flan_jax.tasks import flan2021

LOCAL_TASKS = sorted(n for n, (source, _, _) in flan2021.DATASETS.items() if source == "local")
TFDS_TASKS = sorted(set(flan2021.DATASETS) - set(LOCAL_TASKS))
# A few random examples per dataset; integers below 4 so plain-integer labels (HellaSwag, Story
# Cloze, Sentiment140's 0/2/4) can land on a real option. ClassLabels use their own range.
MOCK = dict(num_examples=4, max_value=4, policy=tfds.testing.MockPolicy.USE_CODE)


@pytest.fixture(scope="module")
def vocabulary(t5_vocab_path):
  return vocab_lib.t5_vocabulary(str(t5_vocab_path))


def _variant(name: str) -> seqio.Task:
  with_options = "label" in flan2021.DATASETS[name][2]
  return seqio.get_mixture_or_task(f"flan_{name}_{'zs_opt' if with_options else 'zs_noopt'}")


def _split_preprocessors(task: seqio.Task):
  """(row preprocessors, the template preprocessor): everything before SeqIO's cache placeholder.

  The template preprocessor also tokenizes (`tokenize=True`), keeping the text as `*_pretokenized`.
  """
  end = [isinstance(p, seqio.CacheDatasetPlaceholder) for p in task.preprocessors].index(True)
  wrap = lambda p: seqio.utils.add_kwargs_to_transform(  # pylint: disable=g-long-lambda
      p, sequence_length=None, output_features=task.output_features)
  return [wrap(p) for p in task.preprocessors[:end - 1]], wrap(task.preprocessors[end - 1])




@pytest.mark.parametrize("name", TFDS_TASKS)
def test_tfds_task_maps_its_builders_features(name, vocabulary):
  tfds_name, _, spec = flan2021.DATASETS[name]
  task = _variant(name)
  label = spec.get("label")
  if spec.get("label_options"):  # fixed label names must cover the ClassLabel exactly
    feature = tfds.builder(tfds_name).info.features[label]
    if isinstance(feature, tfds.features.ClassLabel):
      assert feature.num_classes == len(spec["label_options"]), (
          f"{name}: {len(spec['label_options'])} label options for ClassLabel {feature.names}")
  row_preprocessors, render = _split_preprocessors(task)
  with tfds.testing.mock_data(**MOCK):
    dataset = task.source.get_dataset("train", shuffle=False)
    for preprocess in row_preprocessors:
      dataset = preprocess(dataset)
    canonical = next(dataset.take(1).as_numpy_iterator(), None)
  assert canonical is not None, f"{name}: every mocked example was dropped by its field mapping"
  rendered = next(render(tf.data.Dataset.from_tensors(canonical)).as_numpy_iterator())
  answer = canonical["answer"].decode()
  assert answer.strip()
  if label is not None:
    options = [o.decode() for o in canonical["options"]]
    assert answer in options and len(set(options)) == len(options) >= 2
  inputs, targets = (rendered[f"{k}_pretokenized"].decode() for k in ("inputs", "targets"))
  assert list(rendered["inputs"]) == vocabulary.encode(inputs)
  assert inputs.strip() and targets == answer.strip()
  assert "{" not in inputs and "}" not in inputs  # every template field was filled
  if label is not None:
    assert "Options:\n- " in inputs
  assert vocabulary.encode(inputs) and vocabulary.encode(targets)
  assert rendered["_task_name"].decode() == task.name


@pytest.mark.parametrize("name", LOCAL_TASKS)
def test_local_task_renders_and_names_its_file(name):
  task = _variant(name)
  with pytest.raises(FileNotFoundError, match=rf"flan2021/{name}/train.jsonl"):
    task.source.get_dataset("train")
  constants = flan2021.DATASETS[name][2]["constants"]
  family = flan2021.FAMILIES[("rewrite", False)]
  row = {"text": "hello world", "answer": "Hello world.", **constants}
  rendered = templates.render(family.variant("zs_noopt")[0], row, template_type="zs_noopt")
  assert constants["instruction"] in rendered.inputs and rendered.targets == "Hello world."


def test_every_task_is_checked():
  assert len(TFDS_TASKS) + len(LOCAL_TASKS) == len(flan2021.DATASETS) == 72
