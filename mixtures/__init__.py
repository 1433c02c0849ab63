"""SeqIO mixture registrations (installed as `flan_jax.mixtures`); each module imports the tasks it mixes.

Modules are imported by `flan_jax.data.registry.ensure_registered()`.
"""
