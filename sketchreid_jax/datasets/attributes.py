"""The 27 Market-1501 attributes, in the field order of the real ``market_attribute.mat`` structs.

Shared by the Market-Sketch-1K reader and the synthetic generator, so both agree on one order.
Codes in the file: binary fields 1 = no, 2 = yes (clothes: 1 dress / 2 pants; down: 1 long / 2 short
lower body; up: 1 long / 2 short sleeves; hair: 1 short / 2 long; gender: 1 male / 2 female); age
1..4 (young, teen, adult, old). The reader stores them 0-based (code − 1).
"""

MARKET_ATTRIBUTE_NAMES: tuple[str, ...] = (
  'age', 'backpack', 'bag', 'handbag',
  'downblack', 'downblue', 'downbrown', 'downgray', 'downgreen', 'downpink', 'downpurple',
  'downwhite', 'downyellow',
  'upblack', 'upblue', 'upgreen', 'upgray', 'uppurple', 'upred', 'upwhite', 'upyellow',
  'clothes', 'down', 'up', 'hair', 'hat', 'gender',
)  # fmt: skip

# Number of values each attribute takes (0-based codes): age has four groups, the rest are binary.
NUM_VALUES: tuple[int, ...] = tuple(4 if n == 'age' else 2 for n in MARKET_ATTRIBUTE_NAMES)


def corrupt_attributes(attributes, num_noisy: int, seed: int):
  """CMDSL Table 7's attribute noise: per identity, ``num_noisy`` of the 27 attributes, chosen at
  random, are replaced by a different valid value (seeded, so every run corrupts the same ones).

  ``attributes`` is a (num_identities, 27) array of 0-based codes; unknown rows (all −1) stay.
  """
  import numpy as np

  attributes = np.array(attributes, copy=True)
  if not 0 <= num_noisy <= attributes.shape[1]:
    raise ValueError(
      f'config.data.attribute_noise must be in 0..{attributes.shape[1]}, got {num_noisy}'
    )
  rng = np.random.default_rng([seed, num_noisy])
  sizes = np.asarray(NUM_VALUES)
  for row in attributes:
    if (row < 0).all():
      continue
    for j in rng.choice(attributes.shape[1], size=num_noisy, replace=False):
      row[j] = (row[j] + rng.integers(1, sizes[j])) % sizes[j]  # any value but the true one
  return attributes
