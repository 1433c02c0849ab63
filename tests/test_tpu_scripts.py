"""tpu_scripts/tpu_vm.py in dry-run mode: gcloud command lines, config errors, the job script the
workers run (executed here against a stand-in python), and the preemption/resume loop."""
import importlib.util
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "tpu_scripts" / "tpu_vm.py"
EXAMPLE = SCRIPT.parent / "example.conf"


def _load():
  spec = importlib.util.spec_from_file_location("tpu_vm", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


tpu_vm = _load()


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                        timeout=60, check=False)


def _commands(stdout: str) -> list[list[str]]:
  """The dry-run `+ ...` lines (a command may span lines inside its quotes) as argument lists."""
  commands, current = [], None
  for line in stdout.splitlines():
    if line.startswith("+ "):
      if current is not None:
        commands.append(shlex.split(current))
      current = line[2:]
    elif current is not None and not line.startswith("training finished"):
      current += "\n" + line
  if current is not None:
    commands.append(shlex.split(current))
  return commands


def test_create_is_a_spot_queued_resource_for_the_configured_slice():
  result = _cli("--config", str(EXAMPLE), "create", "--dry_run")
  assert result.returncode == 0, result.stderr
  [command] = _commands(result.stdout)
  assert command[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
  assert "--accelerator-type=v4-64" in command and "--spot" in command
  assert "--runtime-version=tpu-ubuntu2204-base" in command
  assert "--node-id=flan-t5-xxl" in command


def test_overrides_capacity_and_reports_config_mistakes_in_one_line(tmp_path):
  result = _cli("--config", str(EXAMPLE), "--set", "CAPACITY=on-demand", "create", "--dry_run")
  [command] = _commands(result.stdout)
  assert "--spot" not in command
  bad = _cli("--config", str(EXAMPLE), "--set", "CAPACITY=cheap", "create", "--dry_run")
  assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
      "error: CAPACITY=cheap is not one of spot, on-demand, reserved, best-effort"]
  empty = tmp_path / "empty.conf"
  empty.write_text("# nothing\n")
  missing = _cli("--config", str(empty), "delete", "--dry_run")
  assert missing.returncode == 1 and "PROJECT" in missing.stderr and "--set PROJECT=" in missing.stderr
  assert _cli("--config", str(tmp_path / "nope.conf"), "delete").stderr.startswith("error: config file")


def test_run_dry_run_prints_the_whole_lifecycle():
  result = _cli("--config", str(EXAMPLE), "run", "--dry_run")
  assert result.returncode == 0, result.stderr
  verbs = [" ".join(c[:5]) if c[0] == "gcloud" else c[0] for c in _commands(result.stdout)]
  assert verbs == [
      "gcloud compute tpus queued-resources describe", "gcloud compute tpus queued-resources create",
      "gcloud compute tpus queued-resources describe", "git",
      "gcloud compute tpus tpu-vm scp", "gcloud compute tpus tpu-vm ssh",  # setup
      "gcloud compute tpus tpu-vm ssh",  # launch
      "gcloud compute tpus queued-resources describe", "gcloud compute tpus tpu-vm ssh",  # status
      "gcloud compute tpus queued-resources delete"]
  assert all(c[0] in ("gcloud", "git") for c in _commands(result.stdout))


def _remote_script(stdout: str) -> str:
  [ssh] = _commands(stdout)
  [command] = [a for a in ssh if a.startswith("--command=")]
  assert "--worker=all" in ssh
  return command[len("--command="):]


@pytest.mark.parametrize("preempted", [False, True])
def test_launch_script_runs_training_and_records_its_outcome(tmp_path, preempted):
  """Runs the exact remote command with HOME=tmp and a stand-in python that echoes its argv."""
  result = _cli("--config", str(EXAMPLE), "--set", "gin.TRAIN_STEPS=100", "launch", "--dry_run")
  remote = _remote_script(result.stdout)
  venv = tmp_path / "flan_jax" / ".venv" / "bin"
  venv.mkdir(parents=True)
  fake = venv / "python"
  last = "preempted: saved a checkpoint at step 7" if preempted else '{"step": 100}'
  fake.write_text(f"#!/bin/bash\nfor a in \"$@\"; do echo \"ARG $a\"; done\necho '{last}'\n")
  fake.chmod(0o755)
  env = {**os.environ, "HOME": str(tmp_path)}
  subprocess.run(["bash", "-c", remote], env=env, check=True, timeout=30, cwd=tmp_path)
  status = tmp_path / "train.status"
  deadline = time.time() + 20
  while not status.exists() and time.time() < deadline:
    time.sleep(0.05)
  assert status.read_text().strip() == ("preempted" if preempted else "0")
  args = [l[4:] for l in (tmp_path / "train.log").read_text().splitlines() if l.startswith("ARG ")]
  assert args == ["-m", "flan_jax.train", "--gin_file=models/flan_t5_xxl.gin", "--gin_file=runs/finetune.gin",
                  "--gin.MODEL_DIR='gs://my-bucket/flan_t5_xxl'", "--gin.MIXTURE_OR_TASK_NAME='flan2022'",
                  "--gin.INITIAL_CHECKPOINT_PATH='gs://my-bucket/t5_v1_1_xxl_lm_adapt'",
                  "--gin.TRAIN_STEPS=100"]


class _FakeCloud(tpu_vm.Runner):
  """Answers state/status queries from scripted sequences and records the commands."""

  def __init__(self, states, statuses):
    super().__init__(True, print_fn=lambda _: None)
    self.states, self.statuses, self.log = list(states), list(statuses), []

  def __call__(self, command, *, query=None, check=True):
    self.log.append(command)
    if query == "state":
      return self.states.pop(0)
    if query == "status":
      return self.statuses.pop(0)
    return ""


def _kinds(log):
  names = {"create": "create", "delete": "delete", "scp": "scp"}
  out = []
  for command in log:
    if command[0] == "git" or "describe" in command:
      continue
    if "ssh" in command:
      remote = next(a for a in command if a.startswith("--command="))
      out.append("launch" if "flan_jax_train.sh" in remote else
                 "setup" if "pip install" in remote else "status")
    else:
      out.append(next(v for k, v in names.items() if k in command))
  return out


def test_watch_recreates_a_preempted_slice_and_relaunches_until_training_finishes():
  config = tpu_vm.read_config(str(EXAMPLE), ["POLL_SECONDS=0", "DELETE_WHEN_DONE=false"])
  cloud = _FakeCloud(
      states=["NOT_FOUND", "WAITING_FOR_RESOURCES", "ACTIVE", "ACTIVE", "SUSPENDED", "PROVISIONING",
              "ACTIVE", "ACTIVE", "ACTIVE", "ACTIVE"],
      statuses=["running", "preempted", "running", "0"])
  assert tpu_vm.watch(config, cloud, sleep=lambda _: None) == 0
  assert _kinds(cloud.log) == [
      "create", "scp", "setup", "launch", "status",      # first start, training running
      "delete", "create", "scp", "setup", "launch",      # spot preemption: slice recreated
      "status", "launch", "status", "status"]            # SIGTERM save: relaunch in place; done


def test_watch_gives_up_after_max_restarts_and_returns_training_failures():
  config = tpu_vm.read_config(str(EXAMPLE), ["POLL_SECONDS=0", "MAX_RESTARTS=1"])
  cloud = _FakeCloud(states=["SUSPENDED", "SUSPENDED"], statuses=[])
  assert tpu_vm.watch(config, cloud, sleep=lambda _: None) == 1
  failing = _FakeCloud(states=["ACTIVE", "ACTIVE"], statuses=["3"])
  assert tpu_vm.watch(config, failing, sleep=lambda _: None) == 3
