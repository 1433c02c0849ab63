"""The installable package: layout in site-packages, gin files shipped, no nightly packages."""
import importlib.metadata
import subprocess
import sys
import zipfile

import pytest


@pytest.fixture(scope="module")
def wheel_names(repo_root, tmp_path_factory):
  out = tmp_path_factory.mktemp("wheel")
  subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(repo_root),
       "-w", str(out)], check=True, capture_output=True, timeout=300, cwd=out)
  (wheel,) = out.glob("flan_jax-*.whl")
  with zipfile.ZipFile(wheel) as archive:
    return archive.namelist()


def test_wheel_installs_only_the_flan_jax_namespace(wheel_names):
  top_level = {name.split("/")[0] for name in wheel_names if not name.startswith("flan_jax-")}
  assert top_level == {"flan_jax"}


def test_wheel_ships_tasks_mixtures_and_gin_files(wheel_names):
  assert "flan_jax/tasks/__init__.py" in wheel_names
  assert "flan_jax/mixtures/__init__.py" in wheel_names
  assert "flan_jax/gin_configs/runs/demo.gin" in wheel_names
  assert any(n.startswith("flan_jax/gin_configs/models/") and n.endswith(".gin") for n in wheel_names)


def test_no_nightly_or_full_tensorflow_installed():
  installed = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
  assert not installed & {"seqio-nightly", "tfds-nightly", "tensorflow", "mesh-tensorflow"}
  assert {"seqio", "tensorflow-cpu", "t5", "tensorflow-text"} <= {n.replace("_", "-") for n in installed}


def test_envcheck_passes():
  result = subprocess.run([sys.executable, "-m", "flan_jax.envcheck"], capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
