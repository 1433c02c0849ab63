"""Formatter: round-robin templates, metadata, determinism, few-shot assembly and pruning, tf.data."""
import collections
import itertools

import numpy as np
import pytest
import seqio
import tensorflow as tf
from conftest import require_shared_data

from flan_jax.data import formatting as fmt
from flan_jax.data import templates as tpl

T = tpl.Template
# Ten templates whose inputs start with a distinct tag, so the template of every block is visible.
FAMILY = tpl.TemplateFamily(
    "tagged",
    tuple(T(f"[t{i}] {{question}}\n{{options}}", "{answer}") for i in range(10)),
    tuple(T(f"[c{i}] {{question}} Let's think step by step.", "{rationale} So the answer is {answer}.")
          for i in range(10)),
)


def make_examples(n, offset=0):
  return [{"question": f"Is {k} even?", "options": ["yes", "no"],
           "answer": "yes" if k % 2 == 0 else "no", "rationale": f"{k} mod 2 = {k % 2}."}
          for k in range(offset, offset + n)]


POOL = make_examples(300, offset=1000)
QUERIES = make_examples(400)


def words(text):
  return len(text.split())


def tags(inputs, prefix="t"):
  return [int(tok[2:-1]) for tok in inputs.split() if tok.startswith(f"[{prefix}")]


def test_round_robin_templates_and_metadata():
  formatter = fmt.Formatter(FAMILY, tpl.ZS_OPT, task_name="tagged_zs", task_source="unit")
  out = list(formatter.format_stream(QUERIES[:25]))
  assert [o["_template_idx"] for o in out] == [p % 10 for p in range(25)]
  for position, o in enumerate(out):
    assert tags(o["inputs"]) == [position % 10]
    assert o["_task_name"] == "tagged_zs" and o["_task_source"] == "unit"
    assert o["_template_type"] == "zs_opt"
    assert set(o) == {"inputs", "targets", *fmt.METADATA_KEYS}


def test_several_types_rotate_by_position():
  formatter = fmt.Formatter(FAMILY, (tpl.ZS_NOOPT, tpl.ZS_COT), task_name="t")
  out = list(formatter.format_stream(QUERIES[:40]))
  assert [o["_template_type"] for o in out[:4]] == ["zs_noopt", "zs_cot", "zs_noopt", "zs_cot"]
  assert [o["_template_idx"] for o in out[:6]] == [0, 0, 1, 1, 2, 2]
  assert "Options" not in out[0]["inputs"]
  assert out[1]["targets"] == "1 mod 2 = 1. So the answer is no."


def test_same_seed_same_stream_other_seed_other_layouts():
  def stream(seed):
    formatter = fmt.Formatter(FAMILY, (tpl.ZS_OPT, tpl.FS_OPT), task_name="t", seed=seed,
                              options_mode="random", exemplars=POOL)
    return list(formatter.format_stream(QUERIES[:60]))

  first, again, other = stream(0), stream(0), stream(1)
  assert first == again
  assert first != other
  # Randomized options: per-example layouts vary and targets are markers when markers are unique.
  assert len({o["inputs"].split("\n")[1] for o in first if o["_template_type"] == "zs_opt"}) > 3
  assert {o["targets"] for o in first} - {"yes", "no"}


def test_x_shot_keeps_only_exemplars_in_the_query_template_and_drops_empty_queries():
  formatter = fmt.Formatter(FAMILY, tpl.FS_OPT, task_name="t", exemplars=POOL)
  out = [formatter.format(p, q) for p, q in enumerate(QUERIES)]
  kept = [o for o in out if o is not None]
  counts = []
  for o in kept:
    blocks = tags(o["inputs"])
    assert set(blocks) == {o["_template_idx"]}  # exemplars and query share the template
    counts.append(len(blocks) - 1)
    assert o["inputs"].count("Options:") == len(blocks)
  assert min(counts) >= 1
  assert 1.8 < sum(counts) / len(counts) < 3.4  # ~25 candidates x 1/10 kept, conditioned on >= 1
  assert 0 < out.count(None) < 0.2 * len(out)  # P(no match in 25) = 0.9**25 ≈ 7%


def test_mix_five_shot_uses_mixed_templates():
  formatter = fmt.Formatter(FAMILY, tpl.FS_COT, task_name="t", exemplars=POOL,
                            fewshot=fmt.FewShotConfig(mode=fmt.MIX_FIVE_SHOT))
  out = list(formatter.format_stream(QUERIES[:30]))
  assert len(out) == 30
  mixed = 0
  for o in out:
    blocks = tags(o["inputs"], prefix="c")
    assert len(blocks) == 6 and blocks[-1] == o["_template_idx"]
    mixed += len(set(blocks[:-1])) > 1
    assert o["inputs"].count("So the answer is") == 5  # CoT exemplars carry their rationale
  assert mixed > 20


def test_pruning_to_token_budget_and_dropping_queries():
  config = fmt.FewShotConfig(mode=fmt.MIX_FIVE_SHOT, max_input_tokens=20)
  formatter = fmt.Formatter(FAMILY, tpl.FS_NOOPT, task_name="t", exemplars=POOL, fewshot=config,
                            token_counter=words)
  out = list(formatter.format_stream(QUERIES[:50]))
  assert len(out) == 50
  for o in out:
    assert words(o["inputs"]) <= 20
    assert 1 <= len(tags(o["inputs"])) - 1 < 5  # pruned, but never below one exemplar
  tight = fmt.Formatter(FAMILY, tpl.FS_NOOPT, task_name="t", exemplars=POOL, token_counter=words,
                        fewshot=fmt.FewShotConfig(mode=fmt.MIX_FIVE_SHOT, max_input_tokens=8))
  assert list(tight.format_stream(QUERIES[:20])) == []  # query + one exemplar never fits


def test_delimiters_vary_by_task_and_end_the_query_with_the_cue():
  chosen = {fmt.delimiter_for_task(f"task_{i}") for i in range(50)}
  assert len(chosen) >= 6
  assert fmt.delimiter_for_task("task_7") == fmt.delimiter_for_task("task_7")
  delimiter = fmt.Delimiter("\n\n###\n\n", "\nAnswer: ")
  formatter = fmt.Formatter(FAMILY, tpl.FS_NOOPT, task_name="t", exemplars=POOL,
                            delimiter=delimiter, fewshot=fmt.FewShotConfig(mode=fmt.MIX_FIVE_SHOT))
  o = formatter.format(0, QUERIES[0])
  blocks = o["inputs"].split("\n\n###\n\n")
  assert len(blocks) == 6
  assert all("\nAnswer: " in b for b in blocks[:-1])
  assert blocks[-1].endswith("\nAnswer:")


def test_few_shot_without_pool_is_a_clear_error():
  with pytest.raises(ValueError, match="no exemplar pool"):
    fmt.Formatter(FAMILY, tpl.FS_OPT, task_name="t")
  with pytest.raises(ValueError, match="Unknown few-shot mode"):
    fmt.FewShotConfig(mode="three_shot")


def test_seqio_preprocessor_on_tf_data_prunes_with_the_t5_vocabulary(t5_vocab_path):
  vocabulary = seqio.SentencePieceVocabulary(str(t5_vocab_path))
  features = {"inputs": seqio.Feature(vocabulary), "targets": seqio.Feature(vocabulary)}
  columns = {k: [q[k] for q in QUERIES[:64]] for k in QUERIES[0]}
  dataset = tf.data.Dataset.from_tensor_slices(columns)
  preprocess = fmt.make_preprocessor(
      FAMILY, (tpl.ZS_OPT, tpl.FS_OPT), task_name="tagged", task_source="unit", exemplars=POOL,
      fewshot=fmt.FewShotConfig(mode=fmt.MIX_FIVE_SHOT, max_input_tokens=60))
  out = list(preprocess(dataset, output_features=features).as_numpy_iterator())
  assert len(out) == 64
  assert out[0]["_task_name"] == b"tagged" and out[1]["_template_type"] == b"fs_opt"
  assert [int(o["_template_idx"]) for o in out[:6]] == [0, 0, 1, 1, 2, 2]
  for o in out[1::2]:
    assert len(vocabulary.encode(o["inputs"].decode())) <= 60
  # Same stream as the pure-Python formatter (positions counted the same way).
  python = fmt.Formatter(FAMILY, (tpl.ZS_OPT, tpl.FS_OPT), task_name="tagged", task_source="unit",
                         exemplars=POOL, token_counter=lambda s: len(vocabulary.encode(s)),
                         fewshot=fmt.FewShotConfig(mode=fmt.MIX_FIVE_SHOT, max_input_tokens=60))
  expected = list(python.format_stream(QUERIES[:64]))
  assert [o["inputs"].decode() for o in out] == [e["inputs"] for e in expected]


def test_real_niv2_positive_examples_as_exemplars():
  path = require_shared_data("niv2_sample", "tasks", "task1393_superglue_copa_text_completion.json")
  import json  # pylint: disable=g-import-not-at-top
  task = json.loads(path.read_text(encoding="utf-8"))
  definition = task["Definition"][0]
  family = tpl.TemplateFamily("niv2", (
      T("Definition: {definition}\n\nNow complete the following example.\nInput: {input}\nOutput:",
        "{answer}"),
      T("{definition}\n\n{input}", "{answer}"),
  ))
  pool = [{"definition": definition, "input": e["input"], "answer": e["output"]}
          for e in task["Positive Examples"]]
  queries = [{"definition": definition, "input": e["input"], "answer": e["output"][0]}
             for e in task["Instances"][:20]]
  formatter = fmt.Formatter(family, tpl.FS_NOOPT, task_name="task1393", exemplars=pool,
                            fewshot=fmt.FewShotConfig(mode=fmt.MIX_FIVE_SHOT, num_mixed=2))
  out = list(formatter.format_stream(queries))
  assert len(out) == 20
  by_template = collections.Counter(o["_template_idx"] for o in out)
  assert by_template == {0: 10, 1: 10}
  for o, q in zip(out, queries):
    assert o["inputs"].count(definition) == 3 and q["input"] in o["inputs"]
    assert sum(p["input"] in o["inputs"] for p in pool) == 2
    assert o["targets"] in ("A", "B")


def test_to_python_decodes_numpy_examples():
  dataset = tf.data.Dataset.from_tensor_slices({"q": ["a"], "options": [["x", "y"]], "n": [3]})
  example = fmt.to_python(next(dataset.as_numpy_iterator()))
  assert example == {"q": "a", "options": ["x", "y"], "n": 3}
  assert list(itertools.islice(fmt.Formatter(FAMILY, tpl.ZS_NOOPT, task_name="t").format_stream(
      [dict(question="q?", answer="a")]), 1))[0]["inputs"] == "[t0] q?"


def test_python_tokenization_matches_seqio_tokenize_on_real_cot_rows(t5_vocab_path):
  """`tokenize=True` gives exactly the features `seqio.preprocessors.tokenize` gives after it."""
  from flan_jax.data import sources  # pylint: disable=g-import-not-at-top
  from flan_jax.tasks import cot  # pylint: disable=g-import-not-at-top
  vocabulary = seqio.SentencePieceVocabulary(str(t5_vocab_path))
  features = {"inputs": seqio.Feature(vocabulary), "targets": seqio.Feature(vocabulary)}
  cases = [("gsm8k", cot.COT_FAMILY, (tpl.ZS_COT, tpl.FS_COT), 1920),
           ("ecqa", cot.COT_FAMILY, tpl.FS_COT, 300),  # tight budget: exemplars get pruned
           ("strategyqa", cot.INVERSION_FAMILY, (tpl.ZS_NOOPT, tpl.FS_NOOPT), 400)]
  for name, family, types, budget in cases:
    path = require_shared_data("flan_cot", cot.DATASETS[name][0])
    rows = sources.read_tsv(path, sources.COT_COLUMNS)
    dataset = sources.rows_to_dataset(rows[:60], name)
    make = lambda tokenize: fmt.make_preprocessor(  # pylint: disable=cell-var-from-loop
        family, types, task_name=f"eq_{name}", exemplars=rows[100:400], tokenize=tokenize,
        fewshot=fmt.FewShotConfig(max_input_tokens=budget))
    reference = list(seqio.preprocessors.tokenize(make(False)(dataset, output_features=features),
                                                  features).as_numpy_iterator())
    fast = list(make(True)(dataset, output_features=features).as_numpy_iterator())
    assert len(fast) == len(reference) > 40, name
    for got, want in zip(fast, reference):
      assert got.keys() == want.keys()
      for key in want:
        assert np.array_equal(got[key], want[key]), (name, key)


def test_x_shot_shows_a_small_curated_pool_whole_in_the_query_template():
  """NIv2-style pools of 2-4 Positive Examples: filtering 25 random draws would drop ~75% of queries."""
  pool = make_examples(3, offset=1000)
  formatter = fmt.Formatter(FAMILY, tpl.FS_NOOPT, task_name="t", exemplars=pool)
  out = [formatter.format(p, q) for p, q in enumerate(QUERIES[:40])]
  assert None not in out
  for o in out:
    blocks = tags(o["inputs"])
    assert blocks == [o["_template_idx"]] * 4  # all 3 exemplars, then the query, one template
