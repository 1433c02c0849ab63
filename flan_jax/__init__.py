"""flan_jax: instruction finetuning (Flan-T5 / Flan-PaLM style) in JAX, T5X-style."""
__version__ = "0.1.0"
