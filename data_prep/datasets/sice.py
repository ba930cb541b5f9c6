"""TFDS builder `sice`: SICE as repackaged by the ENC/FECNet authors.

Layout (letter case of folders and extensions ignored):

  {train|training}/{low,over,mid}/<id>.JPG
  {test|testing}/{low,over,mid}/<id>.JPG

`mid` is the target of both the under-exposed `low` and the over-exposed
`over` image of the same id, so every id gives two examples, whose `ev_tag` is
'low' or 'over'. The relative EV of these images is not published: `ev` is NaN.
"""

import pathlib

from data_prep.datasets import manual_layout
from data_prep.datasets import paired

SPLIT_FOLDERS = {
    'train': ('train', 'training'),
    'test': ('test', 'testing'),
}
INPUT_TAGS = ('low', 'over')
TARGET_FOLDERS = ('mid', 'gt', 'normal')


def _split_dirs(root: pathlib.Path) -> dict[str, pathlib.Path]:
  dirs = {split: manual_layout.find_subdir(root, aliases)
          for split, aliases in SPLIT_FOLDERS.items()}
  return {split: folder for split, folder in dirs.items()
          if folder is not None
          and manual_layout.find_subdir(folder, TARGET_FOLDERS) is not None}


class Sice(paired.PairedBuilder):
  """SICE (ENC/FECNet split): low and over inputs, the mid image as target."""

  name = 'sice'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download SICE as repackaged by the ENC / FECNet authors and extract it '
      'so that the manual directory (or a folder up to two levels below it) '
      'holds train/{low,over,mid}/ and test/{low,over,mid}/.')
  _EXPECTED_LAYOUT = '{train,test}/{low,over,mid}/<id>.JPG (mid = target)'

  def _is_layout_root(self, folder: pathlib.Path) -> bool:
    return bool(_split_dirs(folder))

  def _scan_pairs(self, root: pathlib.Path) -> dict[str, list[paired.Pair]]:
    splits: dict[str, list[paired.Pair]] = {}
    missing: list[paired.MissingTarget] = []
    for split, split_dir in _split_dirs(root).items():
      target_dir = manual_layout.find_subdir(split_dir, TARGET_FOLDERS)
      targets = manual_layout.list_images(target_dir)
      target_label = paired.relative(target_dir, root)
      pairs = []
      for tag in INPUT_TAGS:
        input_dir = manual_layout.find_subdir(split_dir, (tag,))
        if input_dir is None:
          continue
        for stem, input_path in manual_layout.list_images(input_dir).items():
          input_label = paired.relative(input_path, root)
          target_path = targets.get(stem)
          if target_path is None:
            missing.append(paired.MissingTarget(
                f'{target_label}/{stem}.*', input_label, split))
            continue
          pairs.append(paired.Pair(
              key=input_label, name=stem, scene=stem, input_path=input_path,
              target_path=target_path, ev_tag=tag))
      splits[split] = pairs
    self._report_missing(root, missing)
    return splits
