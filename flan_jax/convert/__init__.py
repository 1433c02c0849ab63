"""Checkpoint import/export: T5X (legacy msgpack, tensorstore/zarr, Orbax) and Hugging Face (T5, Llama).

Entry point: `python -m flan_jax.convert`; library: `core` (load/save), `auto.load_any`.
"""
