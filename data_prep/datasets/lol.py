"""TFDS builder `lol`: the LOL low-light datasets, for generalisation tests.

UEC's generalisation table (trained on MSEC, tested on LOL) and ERL's
task-mix table use them. Three builder configs, one per published layout
(letter case ignored, '-' and '_' interchangeable):

  lol/v1            LOL (Wei et al., 2018)
                    our485/{low,high}/<n>.png   485 training pairs -> train
                    eval15/{low,high}/<n>.png   15 test pairs      -> test
  lol/v2_real       LOL-v2 Real_captured (Yang et al., 2021)
                    Real_captured/{Train,Test}/{Low,Normal}/<name>.png
  lol/v2_synthetic  LOL-v2 Synthetic
                    Synthetic/{Train,Test}/{Low,Normal}/<name>.png

A low image's target is the high / normal image of the same name; in
LOL-v2's real set the names differ by their prefix (`low00690.png` ->
`normal00690.png`), which is matched too. Every input is under-exposed by an
unpublished amount: `ev_tag` is 'low' (grouped as 'under') and `ev` NaN.
"""

import pathlib

import tensorflow_datasets as tfds

from data_prep.datasets import manual_layout
from data_prep.datasets import paired

# config -> (folder holding the splits, {split: (split folder aliases)},
#            input folder aliases, target folder aliases).
LAYOUTS = {
    'v1': (None, {'train': ('our485',), 'test': ('eval15',)},
           ('low',), ('high',)),
    'v2_real': (('Real_captured',), {'train': ('Train',), 'test': ('Test',)},
                ('Low',), ('Normal',)),
    'v2_synthetic': (('Synthetic',), {'train': ('Train',), 'test': ('Test',)},
                     ('Low',), ('Normal',)),
}
_EXPECTED = {
    'v1': 'our485/{low,high}/<n>.png and eval15/{low,high}/<n>.png',
    'v2_real': 'Real_captured/{Train,Test}/{Low,Normal}/<name>.png',
    'v2_synthetic': 'Synthetic/{Train,Test}/{Low,Normal}/<name>.png',
}


def _split_dirs(root: pathlib.Path, config: str) -> dict[str, pathlib.Path]:
  """split -> its folder (holding the input and target folders)."""
  container, splits, inputs, targets = LAYOUTS[config]
  base = manual_layout.find_subdir(root, container) if container else root
  if base is None:
    return {}
  found = {}
  for split, aliases in splits.items():
    folder = manual_layout.find_subdir(base, aliases)
    if (folder is not None and
        manual_layout.find_subdir(folder, inputs) is not None and
        manual_layout.find_subdir(folder, targets) is not None):
      found[split] = folder
  return found


def _target_for(stem: str, targets: dict[str, pathlib.Path]
                ) -> pathlib.Path | None:
  """The target of the same name, or of the name with 'low' -> 'normal'."""
  if stem in targets:
    return targets[stem]
  if stem.lower().startswith('low'):
    return targets.get('normal' + stem[3:]) or targets.get('Normal' + stem[3:])
  return None


class Lol(paired.PairedBuilder):
  """LOL and LOL-v2: low-light inputs with their normal-light targets."""

  name = 'lol'
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=name, description=_EXPECTED[name])
      for name in LAYOUTS
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download LOL (our485/, eval15/) or LOL-v2 (Real_captured/, '
      'Synthetic/) and extract it so that the manual directory (or a folder '
      'up to two levels below it) holds those folders.')

  @property
  def _EXPECTED_LAYOUT(self) -> str:  # pylint: disable=invalid-name
    return _EXPECTED[self.builder_config.name]

  def _is_layout_root(self, folder: pathlib.Path) -> bool:
    return bool(_split_dirs(folder, self.builder_config.name))

  def _scan_pairs(self, root: pathlib.Path) -> dict[str, list[paired.Pair]]:
    config = self.builder_config.name
    _, _, input_aliases, target_aliases = LAYOUTS[config]
    splits: dict[str, list[paired.Pair]] = {}
    missing: list[paired.MissingTarget] = []
    for split, split_dir in _split_dirs(root, config).items():
      target_dir = manual_layout.find_subdir(split_dir, target_aliases)
      targets = manual_layout.list_images(target_dir)
      input_dir = manual_layout.find_subdir(split_dir, input_aliases)
      pairs = []
      for stem, input_path in manual_layout.list_images(input_dir).items():
        input_label = paired.relative(input_path, root)
        target_path = _target_for(stem, targets)
        if target_path is None:
          missing.append(paired.MissingTarget(
              f'{paired.relative(target_dir, root)}/{stem}.*', input_label,
              split))
          continue
        pairs.append(paired.Pair(
            key=input_label, name=stem, scene=stem, input_path=input_path,
            target_path=target_path, ev_tag='low'))
      splits[split] = pairs
    self._report_missing(root, missing)
    return splits
