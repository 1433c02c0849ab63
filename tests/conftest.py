"""Shared test setup: CPU with 8 forced devices, quiet TensorFlow, and the shared data folder.

The environment variables must be set before jax or tensorflow is imported anywhere.
"""
import os

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
os.environ.setdefault("FLAN_JAX_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache"))
# One XLA compilation cache for the test process and the entry points it runs in subprocesses:
# the README commands compile the same tiny steps again and again.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.environ["FLAN_JAX_CACHE_DIR"], "jax_compilation"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def require_shared_data(*parts: str) -> Path:
  """Path under ../shared/data; fails in CI (CI=true) when missing, skips elsewhere."""
  path = SHARED_DATA.joinpath(*parts)
  if not path.exists():
    message = f"{path} is missing: tests that read ../shared/data need the shared folder beside the repo"
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(message)
    pytest.skip(message)
  return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
  return require_shared_data()


@pytest.fixture(scope="session")
def t5_vocab_path() -> Path:
  return require_shared_data("t5_vocab", "t5_spiece.model")


@pytest.fixture(scope="session")
def repo_root() -> Path:
  return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_t5_model_dir(tmp_path_factory, t5_vocab_path) -> Path:
  """A flan_jax model directory holding a randomly initialised flan_t5_tiny with the real T5
  vocabulary: what infer, eval and the notebooks load when no trained checkpoint is needed.
  Tests must not write into it (it is shared by the whole session)."""
  import jax  # pylint: disable=import-outside-toplevel
  from flan_jax import model_dir as model_dir_lib, models  # pylint: disable=import-outside-toplevel
  from flan_jax.models import configs  # pylint: disable=import-outside-toplevel

  path = tmp_path_factory.mktemp("tiny_t5")
  spec = model_dir_lib.write_spec(path, "t5", configs.CONFIGS["flan_t5_tiny"], t5_vocab_path)
  variables = models.build_model(spec, path).get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (8, 16), "decoder_input_tokens": (8, 8)})
  params = jax.tree.map(lambda x: x.value if hasattr(x, "names") else x, variables["params"],
                        is_leaf=lambda x: hasattr(x, "names"))
  model_dir_lib.save_params(path, 0, params)
  return path
