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
