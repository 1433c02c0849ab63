"""SeqIO task registrations (installed as `flan_jax.tasks`); one module per collection.

Modules are imported by `flan_jax.data.registry.ensure_registered()`; import one directly to register
only its tasks.
"""
