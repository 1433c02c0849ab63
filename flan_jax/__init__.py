"""flan_jax: instruction finetuning (Flan-T5 / Flan-PaLM style) in JAX, T5X-style.

The notebook API (defined in flan_jax.api, imported on first use so `import flan_jax` stays light):

    model_dir = flan_jax.finetune("/tmp/demo", gin_files=["runs/demo.gin"], bindings={"TRAIN_STEPS": 50})
    flan_jax.read_metrics(model_dir)["train/loss"]    # [(step, loss), ...] from the TensorBoard events
    model = flan_jax.load(model_dir)                  # flan_jax model dir, T5X checkpoint or HF folder
    model.generate(["Is 7 prime? OPTIONS: - yes - no"], decode="greedy", max_decode_length=16)
    model.score(["Is 7 prime? OPTIONS: - yes - no"] * 2, ["yes", "no"])   # log-likelihoods

Command-line entry points: `python -m flan_jax.{train,eval,infer,convert,compile}`.
"""
__version__ = "0.1.0"

__all__ = ["LoadedModel", "finetune", "load", "read_metrics"]


def __getattr__(name: str):
  """The names in `__all__`, from flan_jax.api on first use."""
  if name in __all__:
    from flan_jax import api  # pylint: disable=import-outside-toplevel
    return getattr(api, name)
  raise AttributeError(f"module 'flan_jax' has no attribute '{name}'")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
