"""The modality ids and their check."""

import numpy as np
import pytest

from sketchreid_jax.modality import PHOTO, SKETCH, check_modality


def test_ids_are_the_batch_halves_in_order():
  assert (PHOTO, SKETCH) == (0, 1)


@pytest.mark.parametrize('modality', [PHOTO, SKETCH])
def test_check_modality_returns_a_valid_id(modality):
  assert check_modality(modality) == modality


@pytest.mark.parametrize('modality', [2, -1, True, False, np.int64(1), 1.0, '0', None])
def test_check_modality_refuses_anything_else(modality):
  with pytest.raises(ValueError, match=r'modality must be the Python int 0 \(photo\) or 1'):
    check_modality(modality)
