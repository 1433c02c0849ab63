"""Offline caching of tasks and mixtures with SeqIO's Apache Beam pipeline, and reading the cache.

Caching runs `seqio.scripts.cache_tasks_main` (SeqIO's own Beam job) in a subprocess: DirectRunner
on one machine, or e.g. `pipeline_options=("--runner=DataflowRunner", "--project=...",
"--region=...", "--temp_location=gs://...")` on Google Cloud. Everything up to each task's
`seqio.CacheDatasetPlaceholder()` (reading, templating, tokenizing) is done once and stored as
TFRecords; `get_dataset(..., use_cached=True)` then only appends EOS and trims.

    python -m flan_jax.data.cache cot_submix --output_dir=/data/flan_cache
    # then, before reading: use_cache_dir("/data/flan_cache"); get_dataset(..., use_cached=True)
    # or train from it: python -m flan_jax.train ... --gin.train.use_cached=True \
    #     --gin.train.cache_dirs="['/data/flan_cache']"
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from typing import Optional, Sequence

import seqio

import tensorflow as tf

from flan_jax.data import mixing
from flan_jax.data import registry


class CacheMissingError(ValueError):
  """A task to be read with `use_cached=True` has no usable SeqIO cache."""


def leaf_tasks(names: Sequence[str]) -> list[str]:
  """The tasks to cache for task and mixture names (a mixture stands for all its leaf tasks)."""
  registry.ensure_registered()
  out = []
  for name in names:
    for task in mixing.leaf_shares(registry.get_mixture_or_task(name)):
      if task not in out:
        out.append(task)
  return out


def cache_command(tasks: Sequence[str], output_dir: str, *, modules: Sequence[str] = (),
                  pipeline_options: Sequence[str] = ("--runner=DirectRunner",),
                  min_shards: int = 1, overwrite: bool = False) -> list[str]:
  """The `cache_tasks_main` command line caching exactly `tasks` into `output_dir`."""
  command = [sys.executable, "-m", "seqio.scripts.cache_tasks_main",
             f"--tasks={','.join(re.escape(t) for t in tasks)}",
             f"--output_cache_dir={output_dir}",
             f"--pipeline_options={','.join(pipeline_options)}",
             f"--min_shards={min_shards}"]
  command += [f"--module_import={m}" for m in modules]
  if overwrite:
    command.append("--overwrite")
  return command


def cache(names: Sequence[str], output_dir: str, *, modules: Sequence[str] = (),
          pipeline_options: Sequence[str] = ("--runner=DirectRunner",), min_shards: int = 1,
          overwrite: bool = False, env: Optional[dict[str, str]] = None) -> list[str]:
  """Caches tasks/mixtures `names` with SeqIO's Beam pipeline; returns the cached task names.

  Args:
    names: task or mixture names (registered in this process and by `modules` in the worker).
    output_dir: cache folder (local or gs://).
    modules: modules the Beam job imports to register the tasks; default: every flan_jax task
      and mixture module (`flan_jax.tasks`, `flan_jax.mixtures`), plus the caller's own.
    pipeline_options: Beam pipeline options.
  """
  tasks = leaf_tasks(names)
  modules = list(modules) or registry.registered_modules()
  command = cache_command(tasks, output_dir, modules=modules, pipeline_options=pipeline_options,
                          min_shards=min_shards, overwrite=overwrite)
  result = subprocess.run(command, env=env or dict(os.environ), capture_output=True, text=True,
                          check=False)
  if result.returncode != 0:
    tail = "\n".join(result.stderr.strip().splitlines()[-15:])
    raise RuntimeError(f"Caching {', '.join(names)} into {output_dir} failed "
                       f"(exit {result.returncode}):\n{tail}")
  return tasks


def use_cache_dir(cache_dir: str) -> None:
  """Makes `get_dataset(..., use_cached=True)` find tasks cached in `cache_dir`."""
  seqio.add_global_cache_dirs([cache_dir])


def require_cached(name: str, splits: Sequence[str]) -> list[str]:
  """Checks that every leaf task of task/mixture `name` is cached for `splits`; returns the tasks.

  SeqIO itself fails on a missing cache with a bare assertion deep inside `get_dataset`; this names
  the task, the folders searched and the command that builds the cache.
  """
  searched = ", ".join(seqio.utils.get_global_cache_dirs()) or "no cache folder (none was given)"
  fix = (f"build it with `python -m flan_jax.data.cache {name} --output_dir=DIR` and train with "
         f"--gin.train.use_cached=True --gin.train.cache_dirs=\"['DIR']\"")
  tasks = leaf_tasks([name])
  for task_name in tasks:
    task = seqio.get_mixture_or_task(task_name)
    if not task.supports_caching:
      raise CacheMissingError(
          f"Task '{task_name}' cannot be read from a cache: its preprocessors have no "
          "seqio.CacheDatasetPlaceholder(); train it with use_cached=False.")
    if task.cache_dir is None:
      raise CacheMissingError(f"Task '{task_name}' is not cached in {searched}: {fix}.")
    for split in splits:
      if not tf.io.gfile.exists(seqio.utils.get_cached_info_path(task.cache_dir, split)):
        raise CacheMissingError(f"Task '{task_name}' is cached in {task.cache_dir} without its "
                                f"'{split}' split: {fix} (with --overwrite).")
  return tasks


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m flan_jax.data.cache", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("names", nargs="+", help="tasks or mixtures to cache")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--module", action="append", default=[],
                      help="extra module registering tasks (repeatable)")
  parser.add_argument("--pipeline_option", action="append", default=[],
                      help="Beam option, e.g. --pipeline_option=--runner=DataflowRunner")
  parser.add_argument("--min_shards", type=int, default=1)
  parser.add_argument("--overwrite", action="store_true")
  args = parser.parse_args(argv)
  try:
    modules = registry.registered_modules() + args.module
    tasks = cache(args.names, args.output_dir, modules=modules,
                  pipeline_options=args.pipeline_option or ("--runner=DirectRunner",),
                  min_shards=args.min_shards, overwrite=args.overwrite)
  except (ValueError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"cached {len(tasks)} tasks into {args.output_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
