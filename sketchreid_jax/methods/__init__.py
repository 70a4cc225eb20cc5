"""The method registry: the one table that says, per method, which model to build and which losses
to combine (DESIGN §1: no ``if method == …`` chains anywhere else).

A method is registered once, in its own module, with :func:`register`. ``train.py`` looks it up by
``config.method``; nothing else needs to know which methods exist.
"""

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

# (config, num_classes, bn_axis_name) -> model
ModelFn = Callable[[ml_collections.ConfigDict, int, str | None], nn.Module]
# (outputs on the global batch, batch on the global batch, config) -> {term: (weight, value)}
LossFn = Callable[
  [Mapping[str, jnp.ndarray], Mapping[str, jnp.ndarray], ml_collections.ConfigDict],
  dict[str, tuple[float, jnp.ndarray]],
]
# config -> frozen variables the step needs (e.g. a frozen U²-Net), or None
FrozenFn = Callable[[ml_collections.ConfigDict], Any]
# (this device's batch, frozen variables, config) -> batch, inside the step before the model
PrepareFn = Callable[[dict, Any, ml_collections.ConfigDict], dict]


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  model_for: ModelFn
  losses_for: LossFn
  # Model outputs the losses need over the global batch (all-gathered across devices); the rest
  # (e.g. feature maps) stay per device.
  global_outputs: tuple[str, ...] = ('feat', 'logits')
  # Batch keys passed to the model as keyword arguments (this device's rows), e.g. the labels that
  # CMAlign pairs by; 'attributes' is supplied when the dataset has them.
  model_inputs: tuple[str, ...] = ()
  # Frozen networks (not trained, not checkpointed): loaded once by ``frozen_for`` and handed to
  # ``prepare``, which may add inputs to the batch inside the compiled step (DALNet's U²-Net masks).
  frozen_for: FrozenFn | None = None
  prepare: PrepareFn | None = None
  # Whether the model trains on fused sketch sets (``config.model.sketch_fusion``, models/fusion.py):
  # its ``__call__`` takes (N, M, H, W, 3) sketches and ``sketch_valid``, and it has ``extract_fused``.
  sketch_fusion: bool = False
  # Parameters that must not change at all under this config ('/'-joined paths or prefixes of
  # the 'params' tree, e.g. DALNet's frozen DAG kernel): the optimiser gives them no update of
  # any kind (``train.param_groups``).
  frozen_params: Callable[[Any], tuple[str, ...]] = lambda config: ()


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
  if method.name in METHODS:
    raise ValueError(f'method {method.name!r} registered twice')
  METHODS[method.name] = method
  return method


def get_method(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f'unknown config.method {name!r}; known methods: {", ".join(sorted(METHODS))}')
  return METHODS[name]


# Registration happens on import; keep this list in sync with the method modules.
from sketchreid_jax.methods import baseline, cmdsl, dalnet  # noqa: E402,F401
