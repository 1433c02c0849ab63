#!/usr/bin/env python3
r"""Create, set up, launch on, watch and tear down a Cloud TPU VM or pod slice with gcloud.

  python tpu_scripts/tpu_vm.py --config=tpu_scripts/flan_t5_xxl_v4_64.conf create  [--dry_run]
  python tpu_scripts/tpu_vm.py --config=... setup     # copy this checkout to every worker, install
  python tpu_scripts/tpu_vm.py --config=... launch    # start training on every worker
  python tpu_scripts/tpu_vm.py --config=... logs [--worker=0] [--follow]
  python tpu_scripts/tpu_vm.py --config=... status
  python tpu_scripts/tpu_vm.py --config=... run       # create → setup → launch → watch, recreating
                                                      # the slice after spot preemptions
  python tpu_scripts/tpu_vm.py --config=... delete

Slices are requested as queued resources (spot by default), so a request waits for capacity
instead of failing. Training resumes by itself: `flan_jax.train` restores the latest checkpoint in
MODEL_DIR (a gs:// bucket every host can reach), so after a preemption `run` only has to recreate
the slice and launch the same command again. `--dry_run` prints every command instead of running
it. Credentials come from the local `gcloud auth`; nothing secret lives in the config files.
Only the standard library is needed, so this runs on a laptop without flan_jax installed.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ("PROJECT", "ZONE", "TPU_NAME", "ACCELERATOR_TYPE")
# Runtime (VM image) per TPU generation, as listed in the Cloud TPU documentation.
RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite",
            "v5e": "v2-alpha-tpuv5-lite", "v6e": "v2-alpha-tpuv6e"}
CAPACITY_FLAGS = {"spot": ["--spot"], "on-demand": [], "reserved": ["--reserved"],
                  "best-effort": ["--best-effort"]}
DEFAULTS = {"CAPACITY": "spot", "REMOTE_DIR": "flan_jax", "LOG_FILE": "train.log",
            "STATUS_FILE": "train.status", "GIN_FILES": "", "POLL_SECONDS": "60",
            "MAX_RESTARTS": "20"}
# Queued-resource states after which the slice is gone and must be recreated.
DEAD_STATES = {"SUSPENDING", "SUSPENDED", "FAILED", "DELETING", "NOT_FOUND"}
WAITING_STATES = {"ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "CREATING"}


class ConfigError(ValueError):
  """A config key is missing or malformed; the message names it and the fix."""


def read_config(path: str | None, overrides: Sequence[str] = ()) -> dict[str, str]:
  """KEY=VALUE lines (shell-style quoting, # comments), then `--set KEY=VALUE` overrides."""
  config = dict(DEFAULTS)
  lines: list[tuple[str, str]] = []
  if path:
    file = Path(path)
    if not file.is_file():
      raise ConfigError(f"config file {path} does not exist; copy tpu_scripts/example.conf and edit it")
    lines += [(f"{path}:{i}", line) for i, line in enumerate(file.read_text().splitlines(), 1)]
  lines += [("--set", item) for item in overrides]
  for where, line in lines:
    words = shlex.split(line, comments=True)
    if not words:
      continue
    if len(words) != 1 or "=" not in words[0]:
      raise ConfigError(f"{where}: expected KEY=VALUE (quote values with spaces), got {line.strip()!r}")
    key, value = words[0].split("=", 1)
    key = key.strip()
    # `gin.KEY=VALUE` lines are gin bindings and keep their case: `--gin.KEY=VALUE` on the workers.
    config["gin." + key[4:] if key.lower().startswith("gin.") else key.upper()] = value
  missing = [k for k in REQUIRED if not config.get(k)]
  if missing:
    raise ConfigError(f"config lacks {', '.join(missing)}; set it in the --config file or pass "
                      f"--set {missing[0]}=...")
  if config["CAPACITY"] not in CAPACITY_FLAGS:
    raise ConfigError(f"CAPACITY={config['CAPACITY']} is not one of {', '.join(CAPACITY_FLAGS)}")
  generation = config["ACCELERATOR_TYPE"].split("-")[0]
  config.setdefault("RUNTIME_VERSION", RUNTIMES.get(generation, ""))
  if not config["RUNTIME_VERSION"]:
    raise ConfigError(f"no default RUNTIME_VERSION for {config['ACCELERATOR_TYPE']}; set RUNTIME_VERSION")
  config.setdefault("QUEUED_RESOURCE", f"{config['TPU_NAME']}-qr")
  return config


class Runner:
  """Runs commands, or (dry run) prints them and answers queries with `dry_answers`."""

  def __init__(self, dry_run: bool, print_fn: Callable[[str], None] = print,
               dry_answers: Mapping[str, str] | None = None):
    self.dry_run, self.print_fn = dry_run, print_fn
    self.dry_answers = dict(dry_answers or {})

  def __call__(self, command: Sequence[str], *, query: str | None = None, check: bool = True) -> str:
    """Runs `command`; `query` names a read-only question whose answer (stdout) is returned."""
    self.print_fn(("+ " if self.dry_run else "$ ") + shlex.join(command))
    if self.dry_run:
      return self.dry_answers.get(query or "", "")
    result = subprocess.run(list(command), text=True, check=False,
                            stdout=subprocess.PIPE if query else None)
    if check and result.returncode:
      raise RuntimeError(f"command failed with exit code {result.returncode}: {shlex.join(command)}")
    return (result.stdout or "").strip() if query else ""


def _where(config: Mapping[str, str]) -> list[str]:
  return [f"--project={config['PROJECT']}", f"--zone={config['ZONE']}"]


def ssh(config: Mapping[str, str], remote_command: str, worker: str = "all") -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", config["TPU_NAME"], *_where(config),
          f"--worker={worker}", f"--command={remote_command}"]


def create_commands(config: Mapping[str, str]) -> list[list[str]]:
  command = ["gcloud", "compute", "tpus", "queued-resources", "create", config["QUEUED_RESOURCE"],
             f"--node-id={config['TPU_NAME']}", *_where(config),
             f"--accelerator-type={config['ACCELERATOR_TYPE']}",
             f"--runtime-version={config['RUNTIME_VERSION']}", *CAPACITY_FLAGS[config["CAPACITY"]]]
  for key, flag in (("NETWORK", "--network"), ("SUBNETWORK", "--subnetwork"),
                    ("SERVICE_ACCOUNT", "--service-account")):
    if config.get(key):
      command.append(f"{flag}={config[key]}")
  return [command]


def delete_commands(config: Mapping[str, str]) -> list[list[str]]:
  return [["gcloud", "compute", "tpus", "queued-resources", "delete", config["QUEUED_RESOURCE"],
           *_where(config), "--force", "--quiet"]]


def state_command(config: Mapping[str, str]) -> list[str]:
  return ["gcloud", "compute", "tpus", "queued-resources", "describe", config["QUEUED_RESOURCE"],
          *_where(config), "--format=value(state.state)"]


def setup_commands(config: Mapping[str, str], archive: str = "/tmp/flan_jax_src.tar.gz") -> list[list[str]]:
  """Ships this checkout (`git archive HEAD`) to every worker and installs it with libtpu."""
  remote = config["REMOTE_DIR"]
  install = " && ".join([
      "set -e",
      "sudo apt-get update -qq",
      "sudo apt-get install -y -qq python3.11 python3.11-venv",
      f"rm -rf {remote} && mkdir -p {remote} && tar -xzf flan_jax_src.tar.gz -C {remote}",
      f"cd {remote}",
      "python3.11 -m venv .venv",
      ".venv/bin/pip install -q --upgrade pip",
      ".venv/bin/pip install -q -c constraints.txt -r requirements/base.txt 'jax[tpu]==0.10.2'",
      ".venv/bin/pip install -q --no-deps -c constraints.txt -r requirements/nodeps.txt",
      ".venv/bin/pip install -q --no-deps -e .",
      ".venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count())'",
  ])
  return [
      ["git", "-C", str(REPO_ROOT), "archive", "--format=tar.gz", f"--output={archive}", "HEAD"],
      ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{config['TPU_NAME']}:flan_jax_src.tar.gz",
       *_where(config), "--worker=all"],
      ssh(config, install),
  ]


def _shell_word(word: str) -> str:
  """Quotes for a shell script, preferring double quotes so gin's single quotes stay readable."""
  if word and not any(c in word for c in "\"$`\\!") and word != shlex.quote(word):
    return f'"{word}"'
  return shlex.quote(word)


def train_command(config: Mapping[str, str]) -> str:
  """The training command line every worker runs (the same one resumes after a preemption)."""
  if not config.get("MODEL_DIR"):
    raise ConfigError("config lacks MODEL_DIR (a gs:// path all workers share); set MODEL_DIR=gs://...")
  args = [".venv/bin/python", "-m", "flan_jax.train"]
  args += [f"--gin_file={g}" for g in shlex.split(config["GIN_FILES"])]
  args.append(f"--gin.MODEL_DIR='{config['MODEL_DIR']}'")
  args += [f"--{key}={value}" for key, value in config.items() if key.startswith("gin.")]
  return " ".join(_shell_word(a) for a in args)


def launch_commands(config: Mapping[str, str]) -> list[list[str]]:
  """Writes the job script on all workers and starts it detached; its outcome lands in STATUS_FILE.

  STATUS_FILE gets `preempted` when the trainer saved and stopped on SIGTERM, otherwise the exit
  code, so `run` can tell a finished run from one to relaunch.
  """
  log, status = config["LOG_FILE"], config["STATUS_FILE"]
  script = "\n".join([
      f"cd ~/{config['REMOTE_DIR']}",
      "export TF_CPP_MIN_LOG_LEVEL=3",
      f"{train_command(config)} > ~/{log} 2>&1",
      "code=$?",
      # Written whole, then renamed: a reader (`run`'s poll) never sees an empty status file.
      f"if grep -q '^preempted:' ~/{log}; then echo preempted; else echo $code; fi > ~/{status}.tmp",
      f"mv ~/{status}.tmp ~/{status}",
  ])
  remote = (f"cat > ~/flan_jax_train.sh <<'EOF'\n{script}\nEOF\n"
            f"rm -f ~/{status}; nohup bash ~/flan_jax_train.sh > /dev/null 2>&1 &")
  return [ssh(config, remote)]


def logs_command(config: Mapping[str, str], worker: str = "0", follow: bool = False) -> list[str]:
  tail = f"tail {'-F' if follow else '-n 100'} ~/{config['LOG_FILE']}"
  return ssh(config, tail, worker)


def status_query(config: Mapping[str, str]) -> list[str]:
  return ssh(config, f"cat ~/{config['STATUS_FILE']} 2>/dev/null || echo running", worker="0")


def run_all(commands: Sequence[Sequence[str]], runner: Runner) -> None:
  for command in commands:
    runner(command)


def slice_state(config: Mapping[str, str], runner: Runner) -> str:
  try:
    return runner(state_command(config), query="state") or "NOT_FOUND"
  except RuntimeError:
    return "NOT_FOUND"


def watch(config: Mapping[str, str], runner: Runner, sleep: Callable[[float], None] = time.sleep,
          max_polls: int | None = None) -> int:
  """Keeps the run going until training finishes: returns its exit code (0 when done).

  Spot slices are preempted; the queued resource then goes to SUSPENDED (or disappears). The
  slice is deleted and requested again, set up, and the same training command relaunched, which
  resumes from the latest checkpoint in MODEL_DIR. Gives up after MAX_RESTARTS restarts.
  """
  poll, max_restarts = float(config["POLL_SECONDS"]), int(config["MAX_RESTARTS"])
  restarts, launched, polls = 0, False, 0
  while max_polls is None or polls < max_polls:
    polls += 1
    state = slice_state(config, runner)
    if state in DEAD_STATES:
      if state != "NOT_FOUND":
        restarts += 1
        if restarts > max_restarts:
          runner.print_fn(f"giving up after {max_restarts} restarts (slice state {state})")
          return 1
        runner.print_fn(f"slice is {state}: deleting and requesting it again (restart {restarts})")
        run_all(delete_commands(config), runner)
      run_all(create_commands(config), runner)
      launched = False
    elif state == "ACTIVE" and not launched:
      run_all(setup_commands(config) + launch_commands(config), runner)
      launched = True
    elif state == "ACTIVE":
      status = runner(status_query(config), query="status", check=False)
      if status == "preempted":
        restarts += 1
        runner.print_fn(f"training stopped on a preemption notice: relaunching (restart {restarts})")
        run_all(launch_commands(config), runner)
      elif status.isdigit():
        runner.print_fn(f"training finished with exit code {status}")
        if status == "0" and config.get("DELETE_WHEN_DONE", "false").lower() == "true":
          run_all(delete_commands(config), runner)
        return int(status)
    elif state not in WAITING_STATES:
      runner.print_fn(f"slice state {state}: waiting")
    sleep(poll)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  def common(suppress: bool) -> argparse.ArgumentParser:
    """The shared options, accepted before or after the action (defaults only at the top)."""
    parser = argparse.ArgumentParser(add_help=False)
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    parser.add_argument("--config", default=default(None),
                        help="KEY=VALUE file (see tpu_scripts/example.conf)")
    parser.add_argument("--set", action="append", default=default([]), metavar="KEY=VALUE",
                        help="override one config key (repeatable)")
    parser.add_argument("--dry_run", action="store_true", default=default(False),
                        help="print every command instead of running it")
    return parser

  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[common(False)],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="action", required=True)
  for name in ("create", "setup", "launch", "status", "delete", "run"):
    sub.add_parser(name, parents=[common(True)])
  logs = sub.add_parser("logs", parents=[common(True)])
  logs.add_argument("--worker", default="0")
  logs.add_argument("--follow", action="store_true")
  args = parser.parse_args(argv)
  try:
    config = read_config(args.config, args.set)
    runner = Runner(args.dry_run, dry_answers={"state": "ACTIVE", "status": "0"})
    if args.action == "create":
      run_all(create_commands(config), runner)
    elif args.action == "setup":
      run_all(setup_commands(config), runner)
    elif args.action == "launch":
      run_all(launch_commands(config), runner)
    elif args.action == "logs":
      runner(logs_command(config, args.worker, args.follow))
    elif args.action == "status":
      print(slice_state(config, runner))
    elif args.action == "delete":
      run_all(delete_commands(config), runner)
    else:
      if args.dry_run:
        return watch(config, _DryRunSequence(runner), sleep=lambda _: None, max_polls=3)
      return watch(config, runner)
  except (ConfigError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


class _DryRunSequence(Runner):
  """Dry-run answers for `run`: the slice is missing, then ACTIVE, then training has finished."""

  def __init__(self, inner: Runner):
    super().__init__(True, inner.print_fn)
    self.states = iter(["NOT_FOUND", "ACTIVE", "ACTIVE"])

  def __call__(self, command, *, query=None, check=True):
    self.print_fn("+ " + shlex.join(command))
    if query == "state":
      return next(self.states, "ACTIVE")
    return "0" if query == "status" else ""


if __name__ == "__main__":
  sys.exit(main())
