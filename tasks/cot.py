"""Chain-of-thought collection: 9 datasets (74,730 examples in the paper) plus input inversion.

Rows come from the Flan collection's CoT TSVs (question, answer, rationale) under
`$FLAN_JAX_DATA_DIR/flan_cot/` (default ../shared/data/flan_cot). Seven of the nine TSVs are there;
`esnli_train.tsv` and `qed_train.tsv` are not (each is registered anyway and fails with a clear
message when read). Each dataset gives `cot_<name>_zs_cot` / `_fs_cot`, and its input-inversion
task `cot_<name>_ii_zs_noopt` / `_fs_noopt` (answer + rationale → question).

Example counts (for capped rates) are the TSV row counts; e-SNLI and QED are estimates: the paper's
74,730 minus the seven known TSVs (41,287) split evenly between the two.
"""
from flan_jax.data import mixing
from flan_jax.data import sources
from flan_jax.data import templates
from flan_jax.data import user_tasks

COLLECTION = "cot"
# name → (TSV file, training rows, where the count comes from)
DATASETS = {
    "aqua": ("aqua_train.tsv", 2728, "flan_cot TSV rows"),
    "creak": ("creak_train.tsv", 6915, "flan_cot TSV rows"),
    "ecqa": ("ecqa_train.tsv", 7112, "flan_cot TSV rows"),
    "esnli": ("esnli_train.tsv", 20644, "estimate: (74,730 - 33,443) / 2"),
    "gsm8k": ("gsm8k_train.tsv", 7473, "flan_cot TSV rows"),
    "qasc": ("qasc_train.tsv", 1084, "flan_cot TSV rows"),
    "qed": ("qed_train.tsv", 20643, "estimate: (74,730 - 33,443) / 2"),
    "sensemaking": ("sensemaking_train.tsv", 6070, "flan_cot TSV rows"),
    "strategyqa": ("strategyqa_train.tsv", 2061, "flan_cot TSV rows"),
}
MISSING_TSVS = ("esnli_train.tsv", "qed_train.tsv")
COT_TYPES = (templates.ZS_COT, templates.FS_COT)
INVERSION_TYPES = (templates.ZS_NOOPT, templates.FS_NOOPT)

COT_FAMILY = templates.TemplateFamily(
    "cot", templates=(templates.Template("{question}", "{answer}"),),
    cot_templates=templates.cot_templates_with_triggers((
        "{question}",
        "Question: {question}",
        "Q: {question}",
        "Here is a problem for you.\n{question}",
        "Please answer the following.\n{question}",
        "{question}\nWork out the answer.",
        "Consider this question: {question}",
        "Problem: {question}",
        "Try this one: {question}",
        "I need help with this question.\n{question}",
    )))
INVERSION_FAMILY = templates.inversion_family("cot_inversion")


def tsv_path(file_name: str):
  return sources.data_dir() / "flan_cot" / file_name


def _register(name: str, file_name: str, count: int, count_source: str) -> None:
  source = sources.cot_tsv_source(tsv_path(file_name), num_examples=count)
  user_tasks.register_task(f"cot_{name}", source, COT_FAMILY, COT_TYPES, collection=COLLECTION,
                           num_examples=count, count_source=count_source)
  user_tasks.register_task(f"cot_{name}_ii", source, INVERSION_FAMILY, INVERSION_TYPES,
                           collection=COLLECTION + "_inversion", num_examples=count,
                           count_source=count_source)


for _name, (_file, _count, _count_source) in DATASETS.items():
  _register(_name, _file, _count, _count_source)

CAP = mixing.CAPS["cot"]
TASK_LIST_SOURCE = (f"DATASETS in flan_jax/tasks/cot.py: the Flan collection's {len(DATASETS)} CoT "
                    f"TSVs ({len(MISSING_TSVS)} not in ../shared/data)")
