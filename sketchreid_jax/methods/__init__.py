"""Methods: each one a module that says which model to build, which losses to combine, which
config keys it adds, how its config is checked and how Grad-CAM cuts its model.

A method is found by name, with no list to keep in sync: ``config.method='cmdsl'`` imports
``sketchreid_jax.methods.cmdsl``, and a dotted name (``'my_project.methods.toy'``) imports that
module from anywhere on the path. The module defines ``METHOD``, a :class:`Method`. Nothing else in
the package names a method (docs/design.md §1: no ``if method == …`` chains), so adding one is one
new module (its model may live in it or beside it) and one config file.
"""

import dataclasses
import functools
import importlib
import pkgutil
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import flax.linen as nn
import jax
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
# config -> None: adds the method's own keys (defaults and one-line meanings) to a base config
ConfigFn = Callable[[ml_collections.ConfigDict], None]
# (config, devices of the job, or None when not training) -> None; raises config_base.ConfigError
CheckFn = Callable[[ml_collections.ConfigDict, int | None], None]
# (config, table, train set) -> (train set, per-photo masks or None), on the host before training
DataFn = Callable[[ml_collections.ConfigDict, Any, Any], tuple[Any, Any]]


@runtime_checkable
class ReIDModel(Protocol):
  """What every method's model offers besides ``__call__(photos, sketches, *, train)``.

  The evaluation, inference and Grad-CAM code call only these (through ``nn.Module.apply``):
  ``extract(images, modality=, train=)`` → {'feat', 'bn_feat'}; ``extract_stem`` /
  ``extract_from_stem`` split it after the modality-specific stem (multi-query 'stem'
  aggregation); ``resnet50_init_map()`` maps its ResNet-50 streams to the ImageNet weights'
  top-level names (``weights.pretrained``).
  """

  def extract(self, images, *, modality: int, train: bool = False) -> dict: ...

  def extract_stem(self, images, *, modality: int, train: bool = False): ...

  def extract_from_stem(self, maps, *, train: bool = False) -> dict: ...

  def resnet50_init_map(self) -> dict[str, str]: ...


_REID_MODEL = tuple(n for n in vars(ReIDModel) if not n.startswith('_'))


@dataclasses.dataclass(frozen=True)
class StageSplit:
  """How Grad-CAM (``viz.gradcam``) cuts a method's model at a stage.

  ``stages(model)`` the valid stage names in network order; ``default(model)`` the default one;
  ``front(model, variables, images, modality, stage)`` the stage's map;
  ``back(model, variables, fmap, stage, modality)`` the eval output dict ({'feat', 'bn_feat', …})
  from it. All run in eval mode; ``back(front(x))`` equals ``model.extract(x)``.
  """

  stages: Callable[[nn.Module], tuple[str, ...]]
  default: Callable[[nn.Module], str]
  front: Callable[..., jax.Array]
  back: Callable[..., Mapping[str, jax.Array]]


def _no_keys(config: ml_collections.ConfigDict) -> None:
  del config


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  model_for: ModelFn
  losses_for: LossFn
  # The model classes ``model_for`` builds (Grad-CAM finds a model's method by its class).
  model_types: tuple[type, ...] = ()
  # The method's own config keys; ``config_base.base_config(name)`` adds them to the common ones.
  config: ConfigFn = _no_keys
  # Checks of the method's keys before anything runs (``validate.validate`` calls it).
  check: CheckFn | None = None
  # Host-side data the method needs beside the table (DALNet's precomputed masks, CMDSL's noisy
  # attributes), prepared once before training.
  prepare_data: DataFn | None = None
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
  # any kind (``optim.param_groups``).
  frozen_params: Callable[[Any], tuple[str, ...]] = lambda config: ()
  # How Grad-CAM cuts the model at a stage; None = Grad-CAM does not support this method.
  stage_split: StageSplit | None = None

  def __post_init__(self):
    build = self.model_for
    if getattr(build, '_checks_protocol', False):
      return

    @functools.wraps(build)
    def checked(config, num_classes, bn_axis_name):
      model = build(config, num_classes, bn_axis_name)
      if not isinstance(model, ReIDModel):
        missing = [n for n in _REID_MODEL if not callable(getattr(model, n, None))]
        raise TypeError(
          f'method {self.name!r}: its model {type(model).__name__} lacks {", ".join(missing)} '
          '(methods.ReIDModel lists what a model must offer).'
        )
      return model

    checked._checks_protocol = True
    object.__setattr__(self, 'model_for', checked)


_PACKAGE = __name__


def builtin_names() -> tuple[str, ...]:
  """The methods shipped in this package (its modules), sorted."""
  return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.ispkg))


# Every method loaded so far, by the name it was asked for (get_method fills it).
METHODS: dict[str, Method] = {}


def get_method(name: str) -> Method:
  """The ``METHOD`` of module ``sketchreid_jax.methods.<name>``, or of the dotted module ``name``."""
  if name in METHODS:
    return METHODS[name]
  module_name = name if '.' in name else f'{_PACKAGE}.{name}'
  if '.' not in name and name not in builtin_names():
    raise ValueError(
      f'unknown config.method {name!r}; known methods: {", ".join(builtin_names())} (or a '
      'dotted module path whose METHOD is a sketchreid_jax.methods.Method)'
    )
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and (module_name == e.name or module_name.startswith(e.name + '.')):
      raise ValueError(
        f'config.method {name!r}: no module {module_name!r} on the Python path ({e}).'
      ) from None
    raise
  method = getattr(module, 'METHOD', None)
  if not isinstance(method, Method):
    raise ValueError(
      f'config.method {name!r}: module {module_name} defines no METHOD = methods.Method(...).'
    )
  METHODS[name] = method
  return method


def builtin_methods() -> dict[str, Method]:
  """Every method of this package by name (imports them all)."""
  return {name: get_method(name) for name in builtin_names()}


def method_of_model(model: nn.Module) -> Method:
  """The method whose ``model_types`` holds ``model``'s class (the nearest class wins)."""
  builtin_methods()
  by_type = {cls: m for m in METHODS.values() for cls in m.model_types}
  for cls in type(model).__mro__:
    if cls in by_type:
      return by_type[cls]
  raise TypeError(
    f'{type(model).__name__} is built by no loaded method (none lists it in Method.model_types).'
  )
