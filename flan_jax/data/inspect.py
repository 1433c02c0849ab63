"""Look at tasks and mixtures: rendered examples, effective leaf rates, task counts per collection.

    python -m flan_jax.data.inspect cot_gsm8k -n 2        # 2 examples per template type
    python -m flan_jax.data.inspect cot_gsm8k_zs_cot      # one variant
    python -m flan_jax.data.inspect cot_submix --plot rates.png
    python -m flan_jax.data.inspect flan2022_submix --rates --json
    python -m flan_jax.data.inspect --counts --json

A base task name (as in `user_tasks.CATALOG`) shows every registered template variant. A mixture
prints its effective leaf rates (a table, or `--json` {leaf: share} summing to 1) and with `--plot`
a bar chart PNG of the rates per submixture entry and the top leaves.
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import json
import sys
from typing import Any, Optional, Sequence

import seqio

from flan_jax.data import mixing
from flan_jax.data import registry
from flan_jax.data import sources
from flan_jax.data import user_tasks

FEATURE_LENGTHS = {"inputs": 2048, "targets": 512}
# Paper task counts (Longpre et al., 2023, Table 1): Muffin's 80 include Dialog and the 5 program
# synthesis datasets, which are not registered here (no public source).
PAPER_COUNTS = {"flan2021+dialog (Muffin)": 80, "t0": 193, "niv2": 1554, "cot": 9, "total": 1836}
# The paper's count per registered collection (Flan 2021 = Muffin's 80 - Dialog 3 - program
# synthesis 5).
PAPER_TARGETS = {"flan2021": 72, "dialog": 3, "t0": 193, "niv2": 1554, "cot": 9}
EXCLUDED = {"program_synthesis": ["dmcc_python", "dr_repair_error_comments",
                                  "dr_repair_line_numbers", "dr_repair_no_errors",
                                  "dr_repair_plain_code"]}
MAIN_COLLECTIONS = ("flan2021", "dialog", "t0", "niv2", "cot")
# flan_collection_info.csv `Source` values per collection, and whether a row is a task (T0 prompts,
# NIv2 tasks) or one of several rows of a dataset.
_INFO_SOURCES = {"flan2021": (("FLAN", "FLAN/T0"), "datasets"),
                 "dialog": (("Dialog",), "datasets"), "t0": (("T0",), "rows"),
                 "niv2": (("NIv2",), "rows"), "cot": (("CoT",), "datasets")}


def collection_info_counts() -> dict[str, int]:
  """Tasks per collection in the Flan collection's own flan_collection_info.csv ({} when absent)."""
  rows = sources.read_collection_info()
  if not rows:
    return {}
  out = {}
  for collection, (names, unit) in _INFO_SOURCES.items():
    matching = [r for r in rows if r.source in names]
    out[collection] = len(matching) if unit == "rows" else len({r.dataset for r in matching})
  return out


def counts() -> dict[str, Any]:
  """Registered base tasks per collection against the paper, and where each task list came from."""
  registry.ensure_registered()
  catalog = user_tasks.CATALOG
  per_collection = {c: len(catalog.get(c, {})) for c in MAIN_COLLECTIONS}
  info = collection_info_counts()
  by_collection = {}
  for c in MAIN_COLLECTIONS:
    module = importlib.import_module(f"flan_jax.tasks.{c}")
    by_collection[c] = {"registered": per_collection[c], "paper": PAPER_TARGETS[c],
                        "gap": PAPER_TARGETS[c] - per_collection[c],
                        "collection_info_csv": info.get(c),
                        "task_list_source": module.TASK_LIST_SOURCE}
  inversion = {c: len(v) for c, v in catalog.items() if c.endswith("_inversion")}
  return {
      "collections": per_collection,
      "total": sum(per_collection.values()),
      "by_collection": by_collection,
      "input_inversion": inversion,
      "variant_tasks": sum(len(e.variants) for c in catalog.values() for e in c.values()),
      "paper": PAPER_COUNTS,
      "excluded": EXCLUDED,
  }


def count_table(result: dict[str, Any]) -> str:
  lines = [f"{'collection':10} {'registered':>10} {'paper':>6} {'gap':>5}  task list from"]
  for c, row in result["by_collection"].items():
    lines.append(f"{c:10} {row['registered']:>10} {row['paper']:>6} {row['gap']:>5}  "
                 f"{row['task_list_source']}")
  lines.append(f"{'total':10} {result['total']:>10} {PAPER_COUNTS['total']:>6}  (the paper's total "
               "also counts the 5 excluded program-synthesis datasets)")
  return "\n".join(lines)


def examples(name: str, n: int) -> list[dict[str, Any]]:
  """Up to `n` rendered examples for each variant of `name` (a variant task or a base task)."""
  registry.ensure_registered()
  variants = [name]
  for collection in user_tasks.CATALOG.values():
    if name in collection:
      variants = list(collection[name].variants.values())
  out = []
  for task_name in variants:
    task = registry.get_mixture_or_task(task_name)
    dataset = task.get_dataset(FEATURE_LENGTHS, split=task.splits[0], shuffle=False)
    for example in itertools.islice(dataset.as_numpy_iterator(), n):
      row = {k: _plain(example[k]) for k in ("_task_name", "_task_source", "_template_type",
                                             "_template_idx") if k in example}
      row["inputs"] = _plain(example.get("inputs_pretokenized", b""))
      row["targets"] = _plain(example.get("targets_pretokenized", b""))
      row["num_input_tokens"] = int(len(example["inputs"]))
      row["num_target_tokens"] = int(len(example["targets"]))
      out.append(row)
  return out


def _plain(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  return value.item() if hasattr(value, "item") else value


def rate_table(name: str, top: Optional[int] = None) -> str:
  shares = sorted(mixing.leaf_shares(name).items(), key=lambda kv: (-kv[1], kv[0]))
  shown = shares if top is None else shares[:top]
  width = max(len(k) for k, _ in shown)
  lines = [f"{'leaf task'.ljust(width)}  share"]
  lines += [f"{k.ljust(width)}  {v:.6f}" for k, v in shown]
  if len(shown) < len(shares):
    lines.append(f"... {len(shares) - len(shown)} more leaves ({len(shares)} in all)")
  return "\n".join(lines)


def plot_rates(name: str, path: str, top: int = 30) -> None:
  """Bar charts: the mixture's own entries, and its `top` leaves by effective share."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  own = mixing.submixture_shares(name)
  leaves = sorted(mixing.leaf_shares(name).items(), key=lambda kv: -kv[1])[:top]
  fig, axes = plt.subplots(1, 2, figsize=(14, max(4, 0.25 * len(leaves))))
  axes[0].barh(list(own), list(own.values()))
  axes[0].set_title(f"{name}: entries")
  axes[1].barh([k for k, _ in leaves][::-1], [v for _, v in leaves][::-1])
  axes[1].set_title(f"top {len(leaves)} leaves (effective share)")
  for ax in axes:
    ax.set_xlabel("share of examples")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m flan_jax.data.inspect", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("name", nargs="?", help="task, base task or mixture name")
  parser.add_argument("-n", type=int, default=1, help="examples per template type")
  parser.add_argument("--rates", action="store_true", help="effective leaf rates of a mixture")
  parser.add_argument("--counts", action="store_true", help="registered tasks per collection")
  parser.add_argument("--json", action="store_true", help="print JSON")
  parser.add_argument("--plot", help="write a bar chart PNG of a mixture's rates here")
  parser.add_argument("--top", type=int, default=40, help="leaves shown in the rate table")
  args = parser.parse_args(argv)
  try:
    if args.counts:
      result = counts()
      print(json.dumps(result, indent=1, ensure_ascii=False) if args.json
            else count_table(result))
      return 0
    if not args.name:
      parser.error("give a task or mixture NAME, or --counts")
    registry.ensure_registered()
    provider = None if _is_base_task(args.name) else registry.get_mixture_or_task(args.name)
    if isinstance(provider, seqio.Mixture):
      if args.json:
        print(json.dumps(mixing.leaf_shares(args.name), indent=1, sort_keys=True))
      else:
        print(rate_table(args.name, args.top))
      if args.plot:
        plot_rates(args.name, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
      return 0
    if args.rates:  # a task is its own only leaf
      print(json.dumps({args.name: 1.0}))
      return 0
    rows = examples(args.name, args.n)
    if args.json:
      print(json.dumps(rows, indent=1, ensure_ascii=False))
    else:
      for row in rows:
        meta = {k: v for k, v in row.items() if k not in ("inputs", "targets")}
        print(f"=== {meta}\n--- inputs:\n{row['inputs']}\n--- targets:\n{row['targets']}\n")
    return 0
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def _is_base_task(name: str) -> bool:
  """A catalog base name that is not itself a registered task (e.g. `cot_gsm8k`)."""
  return (name not in seqio.TaskRegistry.names()
          and any(name in c for c in user_tasks.CATALOG.values()))


if __name__ == "__main__":
  sys.exit(main())
