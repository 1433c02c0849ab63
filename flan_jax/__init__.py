"""flan_jax: instruction finetuning (Flan-T5 / Flan-PaLM style) in JAX, T5X-style."""
__version__ = "0.1.0"


def __getattr__(name: str):
  """`flan_jax.load` (flan_jax.api.load), imported on first use so `import flan_jax` stays light."""
  if name == "load":
    from flan_jax.api import load  # pylint: disable=import-outside-toplevel
    return load
  raise AttributeError(f"module 'flan_jax' has no attribute '{name}'")
