"""The bench scripts' command lines (the benchmarks themselves hog the CPU and are not run here)."""
from __future__ import annotations

import importlib.util
import re
import sys

import pytest
from conftest import REPO_ROOT


def _bench_module(name: str):
  sys.path.insert(0, str(REPO_ROOT / "bench"))
  try:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO_ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  finally:
    sys.path.remove(str(REPO_ROOT / "bench"))


@pytest.mark.parametrize("script", ["decode", "train_step"])
def test_readme_bench_commands_parse(script):
  bench = _bench_module(script)
  readme = (REPO_ROOT / "README.md").read_text()
  commands = re.findall(rf"^\.venv/bin/python bench/{script}\.py([^#\n]*)", readme, re.MULTILINE)
  assert commands
  for flags in commands:
    bench._args(flags.split())  # exits on an unknown flag
  assert bench._args(["--rounds=3"]).rounds == 3


def test_benches_report_the_median_round_and_every_ratio(monkeypatch):
  common = _bench_module("common")
  rounds = [{"tokens_per_s": t} for t in (410.0, 367.0, 386.0)]
  assert common.median_round(rounds)["tokens_per_s"] == 386.0
  assert common.median_round(rounds[:2])["tokens_per_s"] == 367.0

  measured = iter([(400.0, 200.0), (360.0, 190.0), (380.0, 180.0)])
  def fake_workers(script, names, extra_args, malloc_hugepages):
    jax_speed, torch_speed = next(measured)
    assert list(names) == ["jax", "torch"]
    return {"jax": {"tokens_per_s": jax_speed}, "torch": {"tokens_per_s": torch_speed}}
  monkeypatch.setattr(common, "run_workers", fake_workers)
  jax_r, torch_r, ratios = common.compare_in_rounds("bench.py", [], rounds=3)
  assert (jax_r["tokens_per_s"], torch_r["tokens_per_s"]) == (380.0, 190.0)
  assert ratios == [2.0, 1.895, 2.111]
