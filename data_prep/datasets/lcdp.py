"""TFDS builder `lcdp`: the LCDP mixed-exposure dataset (Wang et al., 2023).

Layout (letter case ignored, '-' and '_' interchangeable):

  input/<name>.png        gt/<name>.png         1,415 training pairs
  valid-input/            valid-gt/             100 validation pairs
  test-input/             test-gt/              218 test pairs

Each image mixes under- and over-exposed regions, so it has no single exposure
tag: `ev_tag` is '' and `ev` NaN. Input and target share the file name.
"""

import pathlib

from data_prep.datasets import manual_layout
from data_prep.datasets import paired

# split -> (input folder aliases, target folder aliases).
SPLIT_FOLDERS = {
    'train': (('input', 'train-input'),
              ('gt', 'train-gt')),
    'validation': (('valid-input', 'val-input', 'validation-input'),
                   ('valid-gt', 'val-gt', 'validation-gt')),
    'test': (('test-input',), ('test-gt',)),
}


def _split_dirs(root: pathlib.Path
                ) -> dict[str, tuple[pathlib.Path, pathlib.Path | None]]:
  """split -> (input folder, target folder or None) for splits present."""
  dirs = {}
  for split, (input_aliases, target_aliases) in SPLIT_FOLDERS.items():
    input_dir = manual_layout.find_subdir(root, input_aliases)
    if input_dir is not None:
      dirs[split] = (input_dir,
                     manual_layout.find_subdir(root, target_aliases))
  return dirs


class Lcdp(paired.PairedBuilder):
  """LCDP: images with both under- and over-exposed regions, one target each."""

  name = 'lcdp'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download the LCDP dataset (https://github.com/onpix/LCDPNet) and '
      'extract it so that the manual directory (or a folder up to two levels '
      'below it) holds input/, gt/, valid-input/, valid-gt/, test-input/ and '
      'test-gt/.')
  _EXPECTED_LAYOUT = ('input/ gt/ valid-input/ valid-gt/ test-input/ '
                      'test-gt/ holding <name>.png')

  def _is_layout_root(self, folder: pathlib.Path) -> bool:
    return any(target is not None for _, target in _split_dirs(folder).values())

  def _scan_pairs(self, root: pathlib.Path) -> dict[str, list[paired.Pair]]:
    splits: dict[str, list[paired.Pair]] = {}
    missing: list[paired.MissingTarget] = []
    for split, (input_dir, target_dir) in _split_dirs(root).items():
      targets = manual_layout.list_images(target_dir) if target_dir else {}
      target_label = paired.relative(
          target_dir or root / SPLIT_FOLDERS[split][1][0], root)
      pairs = []
      for stem, input_path in manual_layout.list_images(input_dir).items():
        input_label = paired.relative(input_path, root)
        target_path = targets.get(stem)
        if target_path is None:
          missing.append(paired.MissingTarget(
              f'{target_label}/{stem}.*', input_label, split))
          continue
        pairs.append(paired.Pair(
            key=input_label, name=stem, scene=stem, input_path=input_path,
            target_path=target_path))
      splits[split] = pairs
    self._report_missing(root, missing)
    return splits
