"""sketchreid-jax: sketch-based person re-identification in JAX/Flax.

Read ``docs/design.md`` and the README for the map of the package.
"""

__version__ = '0.1.0'
