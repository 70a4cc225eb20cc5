"""The modality ids: ``PHOTO = 0``, ``SKETCH = 1``, the one definition every module imports.

Why 0 and 1, in this order: a training batch is laid out photos first, then sketches
(``sampler``'s module doc), so a batch's ``modality`` column is 0 then 1 and the losses
(``losses.rtcl``, docs/design.md §3) and the two-stream models index the halves by it. The sample table's
``modality`` column, the models' ``modality=`` argument and the evaluation's extractors use the same
ids, so a row's modality is what selects its stem.
"""

from typing import Any

PHOTO = 0
SKETCH = 1


def check_modality(modality: Any) -> int:
  """``modality`` itself when it is the Python int PHOTO or SKETCH, else a ValueError.

  A bool, a numpy or JAX integer is refused: the modality picks a stem while tracing, so it must be
  a static Python int.
  """
  if isinstance(modality, bool) or not isinstance(modality, int) or modality not in (PHOTO, SKETCH):
    raise ValueError(
      f'modality must be the Python int {PHOTO} (photo) or {SKETCH} (sketch), '
      f'got {modality!r}; it selects a stem and must be static.'
    )
  return modality
