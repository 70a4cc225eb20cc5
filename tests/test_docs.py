"""The design notes live in the repository: every citation of them resolves, and the README's
Layout section lists the package as it is."""

import os
import re
import subprocess

from tests.conftest import REPO

DESIGN = os.path.join(REPO, 'docs', 'design.md')
CITATION = re.compile(r'docs/design\.md §\s?(\d+)(?:\.(\d+))?(?: "([^"]+)")?')


def _tracked(*patterns: str) -> list[str]:
  out = subprocess.run(
    ['git', 'ls-files', *patterns], cwd=REPO, capture_output=True, text=True, check=True
  ).stdout
  return [os.path.join(REPO, p) for p in out.split()]


def _sections() -> dict[str, str]:
  """Top-level section number -> its text (headings '## N. Title')."""
  text = open(DESIGN).read()
  parts = re.split(r'^## (\d+)\. ', text, flags=re.M)
  return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_design_citation_names_a_section_and_label_that_exist():
  sections = _sections()
  assert set(sections) == {'1', '2', '3', '4', '5', '6'}
  checked = 0
  for path in _tracked('*.py', '*.md', '*.ipynb', 'Makefile'):
    if os.path.samefile(path, __file__):
      continue  # this file spells the names it looks for
    text = open(path).read()
    # The brief the project was started from is not in the repository; nothing may cite it.
    assert not re.search(r'\bDESIGN\b', text), f'{path} cites DESIGN'
    for number, sub, label in CITATION.findall(text):
      where = f'{os.path.relpath(path, REPO)}: docs/design.md §{number}'
      assert number in sections, f'{where}: no such section'
      if sub:
        assert f'### {number}.{sub} ' in sections[number], f'{where}.{sub}: no such subsection'
      if label:
        assert label.lower() in sections[number].lower(), f'{where} "{label}": not in the section'
      checked += 1
  assert checked > 50  # the docstrings do cite it


def test_the_readme_layout_lists_every_module_and_folder_of_the_package():
  readme = open(os.path.join(REPO, 'README.md')).read()
  layout = readme.split('## Layout', 1)[1].split('\n## ', 1)[0]
  package = os.path.join(REPO, 'sketchreid_jax')
  entries = sorted(
    name if name.endswith('.py') else name + '/'
    for name in os.listdir(package)
    if (name.endswith('.py') and name != '__init__.py')
    or os.path.isfile(os.path.join(package, name, '__init__.py'))
  )
  # evaluate.py is a deprecated alias of evaluation/, kept for old imports only.
  missing = [
    e
    for e in entries
    if e != 'evaluate.py' and not re.search(rf'^\s+{re.escape(e)}\s', layout, re.M)
  ]
  assert not missing, f'README Layout lacks {missing}'
  listed = re.findall(r'^  ([a-z_0-9]+(?:\.py|/))\s', layout, re.M)
  assert set(listed) <= set(entries), (
    f'README Layout lists what is not there: {set(listed) - set(entries)}'
  )
