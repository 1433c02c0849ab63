"""The Flan collections as SeqIO tasks: counts, every template type on real rows, clear errors for
absent data, a user's own task, and packed feature conversion at 2,048/512 with the T5 vocab."""
import itertools
import json

import numpy as np
import pytest
import seqio
import tensorflow as tf

from conftest import require_shared_data
from flan_jax.data import feature_conversion
from flan_jax.data import formatting
from flan_jax.data import registry
from flan_jax.data import sources
from flan_jax.data import templates
from flan_jax.data import user_tasks
from flan_jax.tasks import cot
from flan_jax.tasks import flan2021

LENGTHS = {"inputs": 2048, "targets": 512}
COT_FAMILIES = {True: cot.COT_FAMILY, False: cot.INVERSION_FAMILY}


@pytest.fixture(scope="module", autouse=True)
def registered():
  require_shared_data("flan_cot", "flan_collection_info.csv")
  registry.ensure_registered()


def _examples(task_name, n=3, lengths=LENGTHS):
  dataset = seqio.get_mixture_or_task(task_name).get_dataset(lengths, split="train",
                                                             shuffle=False)
  return [{k: v.decode() if isinstance(v, bytes) else v for k, v in e.items()}
          for e in itertools.islice(dataset.as_numpy_iterator(), n)]


def test_collection_counts():
  counts = {c: len(v) for c, v in user_tasks.CATALOG.items()}
  assert counts["flan2021"] == 72 and counts["t0"] == 193 and counts["cot"] == 9
  assert counts["dialog"] == 3 and counts["cot_inversion"] == 9
  assert counts["niv2"] == 818  # 875 tasks in the default split lists, 57 MMLU-derived removed
  assert not any("mmmlu" in name for name in user_tasks.CATALOG["niv2"])


@pytest.mark.parametrize("task,template_type", [
    ("cot_gsm8k_zs_cot", "zs_cot"), ("cot_gsm8k_fs_cot", "fs_cot"),
    ("cot_creak_ii_zs_noopt", "zs_noopt"), ("cot_ecqa_ii_fs_noopt", "fs_noopt")])
def test_cot_template_types_on_real_rows(task, template_type):
  require_shared_data("flan_cot", "gsm8k_train.tsv")
  rows = _examples(task)
  assert [r["_template_type"] for r in rows] == [template_type] * 3
  assert [r["_template_idx"] for r in rows] == [0, 1, 2]  # round-robin by position
  assert all(r["_task_name"] == task and r["_task_source"].startswith("cot") for r in rows)
  if template_type.endswith("cot"):
    assert any(t in rows[0]["inputs_pretokenized"] for t in templates.COT_TRIGGERS)
    assert templates.extract_answer(rows[0]["targets_pretokenized"]) != ""
  if task == "cot_gsm8k_zs_cot":
    assert rows[0]["targets_pretokenized"].endswith("So the answer is 72.")
  if template_type.startswith("fs"):  # x-shot: exemplars share the query's template 0
    family = COT_FAMILIES[task.endswith("_fs_cot")]
    head = family.variant(template_type)[0].inputs.split("{")[0] or "Let's think step by step."
    assert rows[0]["inputs_pretokenized"].count(head) >= 2
  assert all(0 < len(r["inputs"]) <= 2048 and r["targets"][-1] == 1 for r in rows)  # EOS


@pytest.mark.parametrize("template_type", ["zs_noopt", "fs_noopt"])
def test_niv2_template_types_on_real_rows(template_type):
  require_shared_data("niv2_sample", "tasks", "task648_answer_generation.json")
  rows = _examples(f"niv2_task648_answer_generation_{template_type}", n=2)
  definition = "You will see a sentence and a given pronoun."
  assert all(definition in r["inputs_pretokenized"] for r in rows)
  assert rows[0]["targets_pretokenized"] == "the city councilmen"
  if template_type == "fs_noopt":  # exemplars are the task's Positive Examples
    assert "shakespeare" in rows[0]["inputs_pretokenized"]


def _rte_like_rows():
  pairs = [("The cat sat on the mat.", "A cat is sitting.", 0),
           ("It rained all day.", "The ground is dry.", 1)]
  rows = [(f"{p} (story {i})", h, label) for i in range(20) for p, h, label in pairs]
  return tf.data.Dataset.from_tensor_slices({
      "premise": [r[0] for r in rows], "hypothesis": [r[1] for r in rows],
      "label": np.array([r[2] for r in rows], np.int64)})


@pytest.mark.parametrize("template_type", ["zs_opt", "zs_noopt", "fs_opt", "fs_noopt"])
def test_flan2021_variants_with_label_options(template_type):
  """flan_rte's own field mapping and family on rows shaped like TFDS super_glue/rte (TFDS is
  offline here)."""
  field_map = seqio.get_mixture_or_task(f"flan_rte_{template_type}").preprocessors[0]
  source = seqio.FunctionDataSource(lambda split, shuffle_files, seed=None: _rte_like_rows(),
                                    splits=["train"])
  pool = [formatting.to_python(e) for e in field_map(_rte_like_rows()).as_numpy_iterator()]
  user_tasks.register_task("test_rte", source, flan2021.FAMILIES[("nli", True)],
                           (template_type,), collection="test", row_preprocessors=(field_map,),
                           exemplars=pool)
  rows = _examples(f"test_rte_{template_type}", n=4)
  assert rows and all(r["_template_type"] == template_type for r in rows)
  for row in rows:
    assert row["targets_pretokenized"] in ("yes", "no")
    assert ("Options:\n- yes\n- no" in row["inputs_pretokenized"]) == template_type.endswith("_opt")
  if template_type.startswith("zs"):
    assert [r["targets_pretokenized"] for r in rows] == ["yes", "no", "yes", "no"]
    assert "The cat sat on the mat. (story 0)" in rows[0]["inputs_pretokenized"]
  else:  # few-shot: exemplar answers precede the query
    assert rows[0]["inputs_pretokenized"].count("Premise:") >= 2


@pytest.mark.parametrize("name", sorted(cot.MISSING_TSVS))
def test_absent_cot_tsv_names_the_file_and_where_to_get_it(name):
  with pytest.raises(FileNotFoundError, match=rf"{name}' does not exist\. Get {name} from .*"
                                              rf"google-research/FLAN/.*/cot_data/{name}"):
    _examples(f"cot_{name.split('_')[0]}_zs_cot", n=1)


@pytest.mark.parametrize("name", sorted(set(cot.DATASETS) - {"esnli", "qed"}))
def test_every_present_cot_dataset_renders_in_every_template_type(name):
  """Real rows of each TSV through every template of every type (CoT and input inversion)."""
  rows = sources.read_tsv(require_shared_data("flan_cot", cot.DATASETS[name][0]),
                          sources.COT_COLUMNS)[:40]
  for family, types in ((cot.COT_FAMILY, ("zs_cot", "fs_cot")),
                        (cot.INVERSION_FAMILY, ("zs_noopt", "fs_noopt"))):
    for template_type in types:
      formatter = formatting.Formatter(family, template_type, task_name=f"cot_{name}",
                                       exemplars=rows)
      out = list(formatter.format_stream(rows))
      assert {r["_template_idx"] for r in out} == set(range(len(family.variant(template_type))))
      assert all(r["inputs"].strip() and r["targets"].strip() for r in out)
      if template_type.endswith("cot"):
        assert all(templates.extract_answer(r["targets"]) for r in out)


def _p3_export(tmp_path, rows):
  path = tmp_path / "p3" / "cos_e_v1.11_i_think" / "train.jsonl"
  path.parent.mkdir(parents=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def test_t0_reads_a_p3_export(tmp_path, monkeypatch):
  """Rows shaped like `bigscience/P3` (text in *_pretokenized, token ids in inputs/targets), and an
  export that kept only the rendered strings."""
  p3 = {"inputs": [363, 19], "inputs_pretokenized": "Where do you keep milk? ",
        "targets": [3, 9], "targets_pretokenized": " fridge", "answer_choices": ["fridge", "oven"]}
  plain = {"inputs": "Where is the sun?", "targets": "sky"}
  _p3_export(tmp_path, [p3, plain])
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path))
  from flan_jax.tasks import t0  # pylint: disable=g-import-not-at-top
  source = sources.local_source({"train": t0.export_path("cos_e_v1.11_i_think")},
                                row_fn=t0.p3_row)
  user_tasks.register_task("test_p3", source, t0.FAMILY, ("zs_opt", "zs_noopt"), collection="test",
                           drop_rows_without_options=True)
  (opt,) = _examples("test_p3_zs_opt", n=5)  # the open row is left to the noopt variant
  assert opt["inputs_pretokenized"] == "Where do you keep milk?\nOptions:\n- fridge\n- oven"
  assert opt["targets_pretokenized"] == "fridge"
  noopt = _examples("test_p3_zs_noopt", n=2)
  assert [r["targets_pretokenized"] for r in noopt] == ["fridge", "sky"]


def test_t0_bad_or_missing_export_is_named(tmp_path, monkeypatch):
  from flan_jax.tasks import t0  # pylint: disable=g-import-not-at-top
  with pytest.raises(FileNotFoundError, match=r"p3/cos_e_v1.11_i_think/train.jsonl' does not "
                                              r"exist\. Export the train split of .*bigscience/P3"
                                              r".*'cos_e_v1.11_i_think'"):
    _examples("t0_cos_e_v1.11_i_think_zs_noopt", n=1)
  path = _p3_export(tmp_path, [{"inputs": [1, 2], "targets": [3]}])
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path))
  with pytest.raises(sources.MalformedRowError, match=rf"{path}:1: .*'inputs_pretokenized'"):
    sources.read_jsonl(t0.export_path("cos_e_v1.11_i_think"), row_fn=t0.p3_row)


def test_flan2021_tasks_read_tfds():
  task = seqio.get_mixture_or_task("flan_rte_zs_opt")
  assert isinstance(task.source, sources.TfdsSource)
  assert task.source.tfds_dataset.name == "super_glue/rte:1.0.2"


def test_user_task_in_a_few_lines(tmp_path):
  path = tmp_path / "my_qa.jsonl"
  path.write_text("\n".join(json.dumps({"question": f"Is {i} even?", "answer": "yes" if i % 2 == 0
                                         else "no", "options": ["yes", "no"]}) for i in range(6)))
  # --- the README example (≤ 15 lines)
  family = templates.TemplateFamily("my_qa", (
      templates.Template("{question}\n{options}", "{answer}"),
      templates.Template("Answer this: {question}\n{options}", "{answer}")))
  names = user_tasks.register_task(
      "my_qa", sources.local_source({"train": path}, required=("question", "answer")),
      family, ("zs_opt", "zs_noopt"), collection="user")
  # ---
  assert names == {"zs_opt": "my_qa_zs_opt", "zs_noopt": "my_qa_zs_noopt"}
  rows = _examples("my_qa_zs_opt", n=2)
  assert rows[0]["inputs_pretokenized"] == "Is 0 even?\nOptions:\n- yes\n- no"
  assert rows[1]["inputs_pretokenized"].startswith("Answer this: Is 1 even?")
  assert rows[1]["targets_pretokenized"] == "no"


@pytest.fixture(scope="module")
def gsm8k_tokens(t5_vocab_path):
  dataset = seqio.get_mixture_or_task("cot_gsm8k_zs_cot").get_dataset(
      LENGTHS, split="train", shuffle=False)
  return dataset.take(64).cache()


def _check_packing(segment_ids, positions):
  for seg_row, pos_row in zip(segment_ids, positions):
    segments = seg_row[seg_row > 0]
    assert (np.diff(segments) >= 0).all() and segments[0] == 1
    assert (seg_row[len(segments):] == 0).all()  # padding only at the end
    for s in np.unique(segments):
      assert (pos_row[seg_row == s] == np.arange((seg_row == s).sum())).all()


def test_packed_encdec_batches(gsm8k_tokens):
  batch = next(feature_conversion.packed_batches(gsm8k_tokens, "encdec",
                                                 batch_size=2).as_numpy_iterator())
  assert batch["encoder_input_tokens"].shape == (2, 2048)
  assert batch["decoder_target_tokens"].shape == (2, 512)
  assert batch["encoder_segment_ids"].max() > 1  # several examples packed per row
  _check_packing(batch["encoder_segment_ids"], batch["encoder_positions"])
  _check_packing(batch["decoder_segment_ids"], batch["decoder_positions"])
  assert batch["encoder_input_tokens"].dtype == np.int32


def test_packed_prefix_lm_batches(gsm8k_tokens):
  batch = next(feature_conversion.packed_batches(gsm8k_tokens, "prefix_lm",
                                                 batch_size=2).as_numpy_iterator())
  assert batch["decoder_target_tokens"].shape == (2, 2560)
  _check_packing(batch["decoder_segment_ids"], batch["decoder_positions"])
  # Per packed example: the input prefix (bidirectional) comes first, the loss-carrying targets
  # last; SeqIO's shift makes them share exactly one position (the last input token predicts the
  # first target).
  segments = batch["decoder_segment_ids"]
  for row in range(2):
    for s in np.unique(segments[row][segments[row] > 0]):
      prefix = batch["decoder_causal_attention"][row][segments[row] == s]
      loss = batch["decoder_loss_weights"][row][segments[row] == s]
      n_prefix, n_loss = prefix.sum(), loss.sum()
      assert n_prefix > 0 and n_loss > 0 and n_prefix + n_loss == len(prefix) + 1
      assert prefix[:n_prefix].all() and loss[-n_loss:].all()
  with pytest.raises(ValueError, match="Unknown feature conversion 'mlm'"):
    feature_conversion.converter("mlm")


def test_dialog_rows_render():
  from flan_jax.tasks import dialog  # pylint: disable=g-import-not-at-top
  turn = dialog.qrecc_row({"Context": ["Who wrote Hamlet?", "Shakespeare."],
                           "Question": "When?", "Answer": "Around 1600."})
  assert turn == {"history": "User: Who wrote Hamlet?\nAssistant: Shakespeare.",
                  "question": "When?", "answer": "Around 1600."}
  inverted = templates.render(dialog.INVERSION_FAMILY.variant("zs_noopt")[0], turn,
                              template_type="zs_noopt")
  assert inverted.targets == "When?" and "Around 1600." in inverted.inputs


def test_registration_needs_no_data(tmp_path):
  from flan_jax.tasks import niv2, t0  # pylint: disable=g-import-not-at-top
  assert niv2.task_names(tmp_path) == []
  assert sources.read_collection_info(tmp_path / "absent.csv") == []
  assert len(t0.TASKS) == len(set(t0.TASKS)) == 193  # one per P3 subset
  assert t0.TASKS[0] == "t0_adversarial_qa_dbert_answer_the_following_q"
  assert "t0_cos_e_v1.11_i_think_zs_opt" in seqio.TaskRegistry.names()
