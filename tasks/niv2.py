"""Super-NaturalInstructions: every task named in the default split lists, MMLU-derived tasks excluded.

Task names come from `splits/default/{train,test}_tasks.txt` of a natural-instructions checkout:
`$FLAN_JAX_NIV2_DIR`, else `$FLAN_JAX_DATA_DIR/niv2_sample` (default ../shared/data/niv2_sample,
whose `tasks/` holds three real task files; the others fail with a clear message when read). The
`*_mmmlu_*` tasks are MMLU questions rewritten as NIv2 tasks; the Flan collection drops them so
MMLU stays held out. Each task gives `niv2_<task>_zs_noopt` (characters SeqIO does not allow in
names, such as '-', become '_') and `_fs_noopt`; few-shot exemplars are
the task's own Positive Examples. Counts are unknown offline, so every task is rated at the 5k cap.

The split lists hold the 875 English tasks of the final release (818 after the MMLU exclusion); the
paper's 1,554 also counts non-English tasks, whose names are not in those lists.
"""
import os
import re
from pathlib import Path

from flan_jax.data import sources
from flan_jax.data import templates
from flan_jax.data import user_tasks

COLLECTION = "niv2"
NIV2_DIR_ENV = "FLAN_JAX_NIV2_DIR"
SPLIT_FILES = ("train_tasks.txt", "test_tasks.txt")
EXCLUDED = re.compile(r"mmlu", re.IGNORECASE)
TYPES = (templates.ZS_NOOPT, templates.FS_NOOPT)

_PATTERNS = (
    ("{definition}\n\n{input}", "{answer}"),
    ("Task: {definition}\nInput: {input}\nOutput:", "{answer}"),
    ("{definition}\n\nInput: {input}", "{answer}"),
    ("Instructions: {definition}\n\n{input}", "{answer}"),
    ("Follow the instructions.\n{definition}\n\nHere is the input: {input}", "{answer}"),
    ("{input}\n\nThe task: {definition}", "{answer}"),
    ("Definition: {definition}\nProblem: {input}\nSolution:", "{answer}"),
    ("Read the task description and respond.\n\n{definition}\n\n{input}\nAnswer:", "{answer}"),
    ("You are given a task. {definition}\n\nQ: {input}\nA:", "{answer}"),
    ("Here is what to do: {definition}\nNow do it for this input:\n{input}", "{answer}"),
)
FAMILY = templates.TemplateFamily(
    "niv2", tuple(templates.Template(i, t) for i, t in _PATTERNS))


def niv2_dir() -> Path:
  return Path(os.environ.get(NIV2_DIR_ENV) or sources.data_dir() / "niv2_sample")


def task_names(root: Path) -> list[str]:
  """Task names in the default split lists, MMLU-derived ones removed (empty when lists are absent)."""
  names = []
  for split_file in SPLIT_FILES:
    path = root / "splits" / "default" / split_file
    if path.exists():
      names += [n.strip() for n in path.read_text(encoding="utf-8").splitlines() if n.strip()]
  return sorted({n for n in names if not EXCLUDED.search(n)})


def _register(root: Path, task: str) -> None:
  path = root / "tasks" / f"{task}.json"
  user_tasks.register_task(
      "niv2_" + re.sub(r"[^\w.]", "_", task), sources.niv2_source(path), FAMILY, TYPES, collection=COLLECTION,
      exemplars=lambda: sources.niv2_positive_examples(path),
      count_source="unknown offline: cap")


ROOT = niv2_dir()
TASKS = task_names(ROOT)
for _task in TASKS:
  _register(ROOT, _task)
