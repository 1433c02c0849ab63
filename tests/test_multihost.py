"""Two processes on this machine (CPU, gloo collectives, jax.distributed over 127.0.0.1) train
like one: same losses as a single process on the same 8-device mesh, process 0 alone writes
TensorBoard summaries, and a checkpoint written by both restores."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from test_trainer import run_losses

TESTS_DIR = Path(__file__).resolve().parent

HARNESS = r'''
import json, os, sys
sys.path.insert(0, os.environ["TESTS_DIR"])
from flan_jax import partitioning
partitioning.initialize_distributed()
import jax
from flan_jax import checkpoints, optim
from flan_jax.metrics import MetricsLogger
from flan_jax.trainer import Trainer
from test_trainer import SHAPES, ToyModel, toy_batches

out_dir = sys.argv[1]
assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
mesh = partitioning.create_mesh(2, 2, 2)
trainer = Trainer(ToyModel(), optim.adafactor(1e-2), mesh, SHAPES)
state = trainer.init_state()
logger = MetricsLogger(os.path.join(out_dir, "tb"), total_steps=4, flops_per_step=0, tokens_per_step=1)
rows = SHAPES["decoder_input_tokens"][0] // jax.process_count()
losses = []
for batch in toy_batches(4):
  local = {k: v[jax.process_index() * rows:(jax.process_index() + 1) * rows] for k, v in batch.items()}
  state, metrics = trainer.train_step(state, trainer.global_batch(local))
  losses.append(float(metrics["loss"]))
logger.log_train(4, [{"loss": losses[-1], "learning_rate": 1e-2}])
logger.close()
ckpt = checkpoints.Checkpointer(os.path.join(out_dir, "run"))
ckpt.save(state, {"batches": 4})
ckpt.wait()
restored, data = ckpt.restore(trainer.abstract_state)
ckpt.close()
print("RESULT " + json.dumps({"losses": losses, "restored_step": int(restored.step), "data": data}), flush=True)
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  script = tmp_path / "harness.py"
  script.write_text(HARNESS)
  port = _free_port()
  flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
  procs = []
  for i in range(2):
    env = {**os.environ, "TESTS_DIR": str(TESTS_DIR), "FLAN_JAX_COORDINATOR": f"127.0.0.1:{port}",
           "FLAN_JAX_NUM_PROCESSES": "2", "FLAN_JAX_PROCESS_ID": str(i),
           "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=4".strip()}
    procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  results = []
  for proc in procs:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    results.append(json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:]))
  single, _, _ = run_losses((2, 2, 2), steps=4)
  for result in results:
    np.testing.assert_allclose(result["losses"], single, rtol=2e-5)
    assert result["restored_step"] == 4 and result["data"] == {"batches": 4}
  events = list((tmp_path / "tb").rglob("events.out.tfevents*"))
  assert len(events) == 1, events  # only process 0 writes summaries


def test_two_processes_infer_with_split_parameters(tiny_t5_model_dir, tmp_path):
  """`python -m flan_jax.infer --model_parallel=2` on 2 processes × 4 devices predicts what one
  process predicts: prompts are not doubled across hosts, results are gathered, host 0 writes."""
  from flan_jax import api  # pylint: disable=import-outside-toplevel
  prompts = ["Is 12 even? OPTIONS: - yes - no", "Translate to German: thank you", "2 + 2 ="]
  (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
  out = tmp_path / "out.jsonl"
  port = _free_port()
  flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
  procs = []
  for i in range(2):
    env = {**os.environ, "FLAN_JAX_COORDINATOR": f"127.0.0.1:{port}",
           "FLAN_JAX_NUM_PROCESSES": "2", "FLAN_JAX_PROCESS_ID": str(i),
           "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=4".strip()}
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "flan_jax.infer", f"--checkpoint={tiny_t5_model_dir}",
         f"--input_file={tmp_path / 'prompts.txt'}", f"--output_file={out}", "--model_parallel=2",
         "--max_decode_length=8", "--batch_size=4"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  logs = []
  for proc in procs:
    log, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, log[-3000:]
    logs.append(log)
  assert ["wrote 3 lines (2 processes, 8 devices)" in log for log in logs] == [True, False]
  written = [json.loads(line)["prediction"] for line in out.read_text().splitlines()]
  assert written == api.load(tiny_t5_model_dir, batch_size=4).generate(prompts, max_decode_length=8)
