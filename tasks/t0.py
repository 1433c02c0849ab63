"""T0-SF: the 193 P3 (promptsource) tasks of the Flan collection, one per T0 row of
flan_collection_info.csv.

Each T0 row names its P3 subset (the `bigscience/P3` config, e.g.
`adversarial_qa_dbert_answer_the_following_q`) in its third column; the task is `t0_<subset>`
(characters SeqIO does not allow become '_'). Its data is that subset's train split exported as
JSONL to `$FLAN_JAX_DATA_DIR/p3/<subset>/train.jsonl`. A P3 row holds the promptsource-rendered
prompt and target as `inputs_pretokenized` / `targets_pretokenized` (its `inputs` / `targets` are
T5 token ids), plus `answer_choices` for multiple-choice prompts; an export that wrote the rendered
text as string `inputs` / `targets` reads too. P3 prompts are already instructions, so the templates
here only frame them and add the options block; the `opt` variants skip rows with no
`answer_choices`. Counts are unknown offline: every task is rated at the 20k cap. Without the
collection info file no T0 task is registered.
"""
import re
from typing import Any, Mapping

from flan_jax.data import sources
from flan_jax.data import templates
from flan_jax.data import user_tasks

COLLECTION = "t0"
TYPES = (templates.ZS_OPT, templates.ZS_NOOPT, templates.FS_OPT, templates.FS_NOOPT)
P3_DATASET = "bigscience/P3"

_PATTERNS = (
    "{prompt}\n{options}",
    "{prompt}\n\n{options}",
    "{prompt}\n{options}\nAnswer:",
    "Respond to the following.\n\n{prompt}\n{options}",
    "{prompt}\n\n{options}\nYour answer:",
    "Here is a task for you.\n{prompt}\n{options}",
    "{prompt}\n{options}\nA:",
    "Q: {prompt}\n{options}\nA:",
    "Read carefully and answer.\n{prompt}\n\n{options}",
    "{prompt}\n\n{options}\n\nWhat is the answer?",
)
FAMILY = templates.TemplateFamily(
    "t0", tuple(templates.Template(p, "{answer}") for p in _PATTERNS))


def _text(row: Mapping[str, Any], field: str) -> str:
  """The rendered text of `field`: `<field>_pretokenized` (P3), else a string `<field>`."""
  value = row.get(f"{field}_pretokenized", row.get(field))
  if not isinstance(value, str):
    raise ValueError(f"a P3 row needs the text of '{field}' as '{field}_pretokenized' (P3's "
                     f"layout) or as a string '{field}'")
  return value.strip()


def p3_row(row: Mapping[str, Any]) -> dict[str, Any]:
  """A P3 row as a canonical example: prompt, answer and (possibly empty) options."""
  choices = row.get("answer_choices") or []
  if not isinstance(choices, list):
    raise ValueError("'answer_choices' must be a list of strings")
  return {"prompt": _text(row, "inputs"), "answer": _text(row, "targets"),
          "options": [str(c).strip() for c in choices]}


def subsets() -> list[str]:
  """The P3 subset of each T0 row of the collection info, in file order ([] when it is absent)."""
  return [row.specific_category for row in sources.read_collection_info() if row.source == "T0"]


def task_name(subset: str) -> str:
  return "t0_" + re.sub(r"[^\w.]", "_", subset)


def export_path(subset: str):
  return sources.data_dir() / "p3" / subset / "train.jsonl"


def _how_to_get(subset: str) -> str:
  return (f"Export the train split of the Hugging Face dataset {P3_DATASET}, config '{subset}', "
          f"as JSON lines (e.g. datasets.load_dataset('{P3_DATASET}', '{subset}', "
          f"split='train').to_json(PATH)) to {export_path(subset)}.")


SUBSETS = subsets()
TASKS = [task_name(s) for s in SUBSETS]
for _subset, _name in zip(SUBSETS, TASKS):
  _source = sources.local_source({"train": export_path(_subset)}, row_fn=p3_row,
                                 how_to_get=_how_to_get(_subset))
  user_tasks.register_task(_name, _source, FAMILY, TYPES, collection=COLLECTION,
                           count_source="unknown offline: cap", drop_rows_without_options=True)
TASK_LIST_SOURCE = (f"the {len(SUBSETS)} T0 rows (P3 subsets) of flan_collection_info.csv"
                    if SUBSETS else "none: flan_collection_info.csv is absent")
