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


def test_benches_report_the_median_round():
  common = _bench_module("common")
  rounds = [{"tokens_per_s": t} for t in (410.0, 367.0, 386.0)]
  assert common.median_round(rounds)["tokens_per_s"] == 386.0
  assert common.median_round(rounds[:2])["tokens_per_s"] == 367.0
