"""T0-SF: the 193 P3 (promptsource) tasks of the Flan collection, one per T0 row of
flan_collection_info.csv.

The collection info names each task's dataset and category but not its P3 subset, so tasks are
named `t0_<dataset>_<k>` (k counts the dataset's rows from 0, in file order). Their data is a P3
export per task: `$FLAN_JAX_DATA_DIR/p3/t0_<dataset>_<k>/train.jsonl` with P3's fields
`inputs_pretokenized`, `targets_pretokenized` and, for multiple-choice prompts, `answer_choices`
(export those from the Hugging Face dataset `bigscience/P3`). P3 prompts are already instructions,
so the templates here only frame them and add the options block; tasks whose rows have no
`answer_choices` should be used in their `noopt` variants. Counts are unknown offline: every task
is rated at the 20k cap. Without the collection info file no T0 task is registered.
"""
import collections
import re
from typing import Any, Mapping

from flan_jax.data import sources
from flan_jax.data import templates
from flan_jax.data import user_tasks

COLLECTION = "t0"
TYPES = (templates.ZS_OPT, templates.ZS_NOOPT, templates.FS_OPT, templates.FS_NOOPT)

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


def p3_row(row: Mapping[str, Any]) -> dict[str, Any]:
  """A P3 row as a canonical example: prompt, answer and (possibly empty) options."""
  return {"prompt": str(row["inputs_pretokenized"]).strip(),
          "answer": str(row["targets_pretokenized"]).strip(),
          "options": [str(c) for c in row.get("answer_choices") or []]}


def task_names() -> list[str]:
  """`t0_<dataset>_<k>` for each T0 row of the collection info (empty when the file is absent)."""
  seen = collections.Counter()
  names = []
  for row in sources.read_collection_info():
    if row.source == "T0":
      dataset = re.sub(r"[^\w]", "_", row.dataset)
      names.append(f"t0_{dataset}_{seen[dataset]}")
      seen[dataset] += 1
  return names


TASKS = task_names()
for _name in TASKS:
  _source = sources.local_source(
      {"train": sources.data_dir() / "p3" / _name / "train.jsonl"},
      required=("inputs_pretokenized", "targets_pretokenized"), row_fn=p3_row)
  user_tasks.register_task(_name, _source, FAMILY, TYPES, collection=COLLECTION,
                           count_source="unknown offline: cap")
