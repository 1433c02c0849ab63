"""Data sources: local JSONL/TSV (incl. malformed rows), Flan CoT TSVs, GSM8K, NIv2 JSON, Flan JSONL,
TFDS and Hugging Face error messages, and field mapping."""
import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import require_shared_data
from flan_jax.data import sources


def _rows(source, split="train"):
  return list(source.get_dataset(split, shuffle=False).as_numpy_iterator())


def test_jsonl_source_reads_rows_and_lists(tmp_path):
  path = tmp_path / "qa.jsonl"
  path.write_text('{"question": "2+2?", "answer": "4", "options": ["3", "4"]}\n\n'
                  '{"question": "Sky?", "answer": "blue", "options": ["blue", "red", "green"]}\n')
  rows = _rows(sources.local_source({"train": path}, required=("question", "answer")))
  assert [r["answer"] for r in rows] == [b"4", b"blue"]
  assert rows[1]["options"].tolist() == [b"blue", b"red", b"green"]


def test_malformed_jsonl_names_file_and_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"question": "a", "answer": "b"}\n{"question": "c", "answer": \n'
                  '{"question": "d"}\n')
  source = sources.local_source({"train": path}, required=("question", "answer"))
  with pytest.raises(sources.MalformedRowError, match=rf"{path}:2: not valid JSON.*skip_malformed"):
    _rows(source)
  stats = sources.SkipStats()
  rows = sources.read_jsonl(path, required=("question", "answer"), skip_malformed=True,
                            stats=stats)
  assert len(rows) == 1 and stats.skipped == 2
  assert f"{path}:2" in stats.first_error


def test_malformed_tsv_names_file_and_line_or_counts(tmp_path):
  path = tmp_path / "cot.tsv"
  path.write_text("q1\ta1\tr1\nq2\ta2\nq3\ta3\tr3 with\\nnewline\n")
  with pytest.raises(sources.MalformedRowError, match=rf"{path}:2: expected 3 tab-separated"):
    _rows(sources.cot_tsv_source(path))
  stats = sources.SkipStats()
  rows = _rows(sources.local_source({"train": path}, file_format="tsv",
                                    columns=sources.COT_COLUMNS, skip_malformed=True, stats=stats))
  assert [r["question"] for r in rows] == [b"q1", b"q3"]
  assert rows[1]["rationale"] == b"r3 with\nnewline"
  assert stats.skipped == 1


def test_missing_file_is_named_when_read_not_at_construction(tmp_path):
  source = sources.cot_tsv_source(tmp_path / "absent_train.tsv")  # constructing reads nothing
  with pytest.raises(FileNotFoundError, match="absent_train.tsv.*FLAN_JAX_DATA_DIR"):
    _rows(source)


def test_flan_cot_tsv_real_rows():
  path = require_shared_data("flan_cot", "aqua_train.tsv")
  rows = _rows(sources.cot_tsv_source(path))
  assert len(rows) == 2728
  first = {k: v.decode() for k, v in rows[0].items()}
  assert first["answer"] == "(C)"
  assert "\nOptions:\n(A) 300" in first["question"]  # literal \n escapes became newlines
  assert first["rationale"].startswith("1/7:1/7:1/14 = 2:2:1\n")


def test_gsm8k_upstream_layout():
  folder = require_shared_data("gsm8k")
  source = sources.gsm8k_source(folder)
  train = _rows(source, "train")
  assert len(train) == 7473
  assert train[0]["answer"] == b"72"
  assert b"####" not in train[0]["rationale"] and b"48/2" in train[0]["rationale"].replace(b" ", b"")
  assert len(_rows(source, "test")) == 1319


def test_niv2_task_json():
  path = require_shared_data("niv2_sample", "tasks", "task648_answer_generation.json")
  rows = _rows(sources.niv2_source(path))
  assert len(rows) == 281
  assert rows[0]["definition"].startswith(b"You will see a sentence and a given pronoun.")
  assert rows[0]["answer"] == b"the city councilmen"
  shots = sources.niv2_positive_examples(path)
  assert shots[0]["answer"] == "shakespeare" and shots[0]["definition"] == rows[0]["definition"].decode()


def test_niv2_file_that_is_not_a_task(tmp_path):
  path = tmp_path / "task1_x.json"
  path.write_text(json.dumps({"Definition": ["d"]}))
  with pytest.raises(sources.MalformedRowError, match="missing Positive Examples, Instances"):
    sources.read_niv2_task(path)


def test_flan_jsonl_carries_metadata(tmp_path):
  path = tmp_path / "flan.jsonl"
  path.write_text(json.dumps({"inputs": "Q?", "targets": "A", "task_name": "t",
                              "task_source": "Flan2021", "template_type": "zs_opt"}) + "\n")
  (row,) = _rows(sources.flan_jsonl_source({"train": path}))
  assert row["_task_name"] == b"t" and row["_task_source"] == b"Flan2021"
  assert row["_template_type"] == b"zs_opt" and row["_template_idx"] == -1


def test_tfds_missing_dataset_says_how_to_build(tmp_path):
  source = sources.tfds_source("flan_jax_no_such_dataset:1.0.0", splits=("train",),
                               tfds_data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"flan_jax_no_such_dataset.*tfds build "
                                              r"flan_jax_no_such_dataset --data_dir"):
    source.get_dataset("train")
  with pytest.raises(ValueError, match="needs a version"):
    sources.tfds_source("glue/rte")


def test_hf_source_without_datasets_package():
  try:
    import datasets  # noqa: F401  pylint: disable=unused-import,g-import-not-at-top
    pytest.skip("`datasets` is installed here")
  except ImportError:
    pass
  with pytest.raises(ImportError, match=r"'some/dataset' needs the `datasets` package"):
    sources.hf_source("some/dataset").get_dataset("train")


def test_field_mapper_labels_choices_and_paths():
  dataset = tf.data.Dataset.from_tensors({
      "premise": "A man sleeps.", "hypothesis": "A person rests.", "label": np.int64(0),
      "polarity": np.int64(4), "choices": {"text": ["red", "blue"], "label": ["A", "B"]},
      "answerKey": "B", "answers": {"text": ["first", "second"]}, "passage": "one two three",
  })
  nli = sources.field_mapper({"premise": "premise", "hypothesis": "hypothesis"}, label="label",
                             label_options=("yes", "maybe", "no"))
  (row,) = list(nli(dataset).as_numpy_iterator())
  assert row["answer"] == b"yes" and row["options"].tolist() == [b"yes", b"maybe", b"no"]
  by_value = sources.field_mapper({}, label="polarity", label_options=("neg", "neu", "pos"),
                                  label_values=(0, 2, 4))
  assert next(by_value(dataset).as_numpy_iterator())["answer"] == b"pos"
  by_key = sources.field_mapper({}, label="answerKey", choices="choices/text",
                                choice_keys="choices/label")
  assert next(by_key(dataset).as_numpy_iterator())["answer"] == b"blue"
  generation = sources.field_mapper({"context": "passage|drop_last", "all": "answers/text[*]"},
                                    answer="answers/text[0]")
  row = next(generation(dataset).as_numpy_iterator())
  assert (row["context"], row["all"], row["answer"]) == (b"one two", b"first, second", b"first")
  with pytest.raises(KeyError, match="'nope'.*Fix the task's field mapping"):
    sources.field_mapper({"x": "nope"}, answer="premise")(dataset)


def test_field_mapper_drops_examples_without_a_target():
  dataset = tf.data.Dataset.from_tensor_slices({
      "label": np.array([0, -1, 2, 5], np.int64), "polarity": np.array([4, 1, 0, 3], np.int64),
      "answer": ["a", "", "  ", "b"]})
  nli = sources.field_mapper({}, label="label", label_options=("yes", "maybe", "no"))
  assert [r["answer"] for r in nli(dataset).as_numpy_iterator()] == [b"yes", b"no"]  # SNLI's -1
  by_value = sources.field_mapper({}, label="polarity", label_options=("neg", "neu", "pos"),
                                  label_values=(0, 2, 4))
  assert [r["answer"] for r in by_value(dataset).as_numpy_iterator()] == [b"pos", b"neg"]
  generation = sources.field_mapper({}, answer="answer")
  assert [r["answer"] for r in generation(dataset).as_numpy_iterator()] == [b"a", b"b"]
  squad_v2 = sources.field_mapper({}, answer="answer", empty_answer="unanswerable")
  assert [r["answer"] for r in squad_v2(dataset).as_numpy_iterator()] == [
      b"a", b"unanswerable", b"unanswerable", b"b"]


def test_malformed_rows_of_every_source_type_are_located(tmp_path):
  """NIv2 task JSON, Flan JSONL, JSON lists, rows a row_fn cannot map: file and line (or item)."""
  niv2 = tmp_path / "task2_x.json"
  niv2.write_text(json.dumps({"Definition": ["d"], "Positive Examples": [],
                              "Instances": [{"input": "a", "output": ["b"]}, {"input": "c"}]}))
  with pytest.raises(sources.MalformedRowError, match=rf"{niv2}: Instances\[1\]: .*'output'"):
    sources.niv2_examples(niv2)
  broken = tmp_path / "task3_x.json"
  broken.write_text('{"Definition": ["d"],\n "Instances": [}\n')
  with pytest.raises(sources.MalformedRowError, match=rf"{broken}:2: not valid JSON"):
    sources.read_niv2_task(broken)
  with pytest.raises(FileNotFoundError, match=r"task4_x.json' does not exist\. Clone "
                                              r"https://github.com/allenai/natural-instructions"):
    sources.read_niv2_task(tmp_path / "task4_x.json")
  flan = tmp_path / "flan.jsonl"
  flan.write_text('{"inputs": "q", "targets": "a"}\n{"inputs": "q"}\n'
                  '{"inputs": "q", "targets": "a", "template_idx": "first"}\n')
  with pytest.raises(sources.MalformedRowError, match=rf"{flan}:2: missing field\(s\) targets"):
    _rows(sources.flan_jsonl_source({"train": flan}))
  stats = sources.SkipStats()
  rows = _rows(sources.flan_jsonl_source({"train": flan}, skip_malformed=True, stats=stats))
  assert len(rows) == 1 and stats.skipped == 2 and stats.first_error.startswith(f"{flan}:2:")
  flan.write_text('{"inputs": "q", "targets": "a", "template_idx": "first"}\n')
  with pytest.raises(sources.MalformedRowError,
                     match=rf"{flan}:1: cannot map the row \(ValueError: .*'first'"):
    _rows(sources.flan_jsonl_source({"train": flan}))
  listed = tmp_path / "turns.json"
  listed.write_text(json.dumps([{"Question": "q"}, "not an object", {"Answer": "a"}]))
  with pytest.raises(sources.MalformedRowError, match=rf"{listed}: item 1: expected a JSON object"):
    sources.read_json_list(listed)
  stats = sources.SkipStats()
  rows = sources.read_json_list(listed, row_fn=lambda r: {"q": r["Question"]},
                                skip_malformed=True, stats=stats)
  assert rows == [{"q": "q"}] and stats.skipped == 2
  tsv = tmp_path / "rows.tsv"
  tsv.write_text("1\tx\nnot a number\ty\n")
  with pytest.raises(sources.MalformedRowError, match=rf"{tsv}:2: cannot map the row"):
    sources.read_tsv(tsv, ("n", "s"), row_fn=lambda r: {"n": int(r["n"]), "s": r["s"]})
