"""Super-NaturalInstructions: every task of a natural-instructions checkout, MMLU-derived ones out.

The checkout is `$FLAN_JAX_NIV2_DIR` (a clone of github.com/allenai/natural-instructions), else
`$FLAN_JAX_DATA_DIR/niv2_sample` (default ../shared/data/niv2_sample: the default split lists and
three real task files). Registered tasks are the union of
* every `tasks/task*.json` file (a full checkout has ~1,600), and
* the names in `splits/default/{train,test,excluded}_tasks.txt` (the sample's two lists name the 875
  English tasks of the final release),
minus the `*_mmmlu_*` tasks (MMLU questions rewritten as NIv2 tasks; the Flan collection drops
them so MMLU stays held out). A full checkout so gives the paper's collection (~1,554 tasks,
non-English ones included); the sample gives 818. `TASK_LIST_SOURCE` says which it was. A task whose file is absent
is still registered and fails with a clear message when read.

Each task gives `niv2_<task>_zs_noopt` (characters SeqIO does not allow in names, such as '-',
become '_') and `_fs_noopt`; few-shot exemplars are the task's own Positive Examples. Counts are
unknown offline, so every task is rated at the 5k cap.
"""
import os
import re
from pathlib import Path

from flan_jax.data import sources
from flan_jax.data import templates
from flan_jax.data import user_tasks

COLLECTION = "niv2"
NIV2_DIR_ENV = "FLAN_JAX_NIV2_DIR"
SPLIT_FILES = ("train_tasks.txt", "test_tasks.txt", "excluded_tasks.txt")
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


def listed_names(root: Path) -> set[str]:
  """Task names in the default split lists (empty when the lists are absent)."""
  names = set()
  for split_file in SPLIT_FILES:
    path = root / "splits" / "default" / split_file
    if path.exists():
      names |= {n.strip() for n in path.read_text(encoding="utf-8").splitlines() if n.strip()}
  return names


def file_names(root: Path) -> set[str]:
  """Names of the task files in `tasks/` (empty when the folder is absent)."""
  folder = root / "tasks"
  return {p.stem for p in folder.glob("task*.json")} if folder.is_dir() else set()


def task_names(root: Path) -> list[str]:
  """Task files ∪ split-list names, MMLU-derived ones removed, sorted."""
  return sorted(n for n in file_names(root) | listed_names(root) if not EXCLUDED.search(n))


def task_list_source(root: Path) -> str:
  """Where the registered task names came from, in words (shown by `inspect --counts`)."""
  files, listed = file_names(root), listed_names(root)
  removed = len({n for n in files | listed if EXCLUDED.search(n)})
  return (f"{root}: {len(files)} task files in tasks/ ∪ {len(listed)} names in "
          f"splits/default/*_tasks.txt, {removed} MMLU-derived removed; a full "
          f"natural-instructions checkout in ${NIV2_DIR_ENV} gives the paper's collection")


def _register(root: Path, task: str) -> None:
  path = root / "tasks" / f"{task}.json"
  user_tasks.register_task(
      "niv2_" + re.sub(r"[^\w.]", "_", task), sources.niv2_source(path), FAMILY, TYPES, collection=COLLECTION,
      exemplars=lambda: sources.niv2_positive_examples(path),
      count_source="unknown offline: cap")


ROOT = niv2_dir()
TASKS = task_names(ROOT)
TASK_LIST_SOURCE = task_list_source(ROOT)
for _task in TASKS:
  _register(ROOT, _task)
