"""TFDS builder `msec`: the MSEC exposure-errors dataset (Afifi et al., 2021).

Layout (official names first; the renamed folders of common third-party
copies are accepted too, letter case and '-'/'_' ignored):

  {training|train}/INPUT_IMAGES/<scene>_<tag>.JPG   tags N1.5 N1 0 P1 P1.5
  {training|train}/GT_IMAGES/<scene>.jpg            expert C, the target
  {validation|valid|val}/...                        as training
  {testing|test}/INPUT_IMAGES/<scene>_<tag>.JPG
  {testing|test}/expert_{a..e}_testing_set/<scene>.jpg

Input names are split on the LAST underscore, since scene names contain
underscores themselves (e.g. 'a0001-jmac_DSC1459_N1.5'). In every split the
target is expert C's retouch (the GT_IMAGES of training and validation are
expert C's too); on the test split the other experts' retouches, where their
folders exist, are stored as `other_targets` named 'expert_a', ... .
"""

import pathlib

from data_prep import ev_tags
from data_prep.datasets import manual_layout
from data_prep.datasets import paired

SPLIT_FOLDERS = {
    'train': ('training', 'train'),
    'validation': ('validation', 'valid', 'val'),
    'test': ('testing', 'test'),
}
INPUT_FOLDERS = ('INPUT_IMAGES', 'input', 'inputs')
TARGET_EXPERT = 'c'
OTHER_EXPERTS = ('a', 'b', 'd', 'e')


def _expert_folder(split_dir: pathlib.Path,
                   expert: str) -> pathlib.Path | None:
  return manual_layout.find_subdir(
      split_dir, (f'expert_{expert}_testing_set', f'expert_{expert}'))


def _target_folder(split_dir: pathlib.Path) -> pathlib.Path | None:
  """GT_IMAGES, or expert C's folder where a copy has that instead."""
  return (manual_layout.find_subdir(split_dir, ('GT_IMAGES', 'gt'))
          or _expert_folder(split_dir, TARGET_EXPERT))


def _split_dirs(root: pathlib.Path) -> dict[str, pathlib.Path]:
  dirs = {split: manual_layout.find_subdir(root, aliases)
          for split, aliases in SPLIT_FOLDERS.items()}
  return {split: folder for split, folder in dirs.items()
          if folder is not None
          and manual_layout.find_subdir(folder, INPUT_FOLDERS) is not None}


class Msec(paired.PairedBuilder):
  """MSEC: 5 exposures (-1.5..+1.5 EV) of FiveK scenes, expert C targets."""

  name = 'msec'

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download the MSEC dataset (https://github.com/mahmoudnafifi/'
      'Exposure_Correction) and extract it so that the manual directory (or '
      'a folder up to two levels below it) holds training/, validation/ and '
      'testing/ (train/, valid/, test/ also work).')
  _EXPECTED_LAYOUT = (
      '{training,validation,testing}/INPUT_IMAGES/<scene>_<tag>.JPG with '
      '{training,validation}/GT_IMAGES/<scene>.jpg and '
      'testing/expert_{a..e}_testing_set/<scene>.jpg')

  def _is_layout_root(self, folder: pathlib.Path) -> bool:
    return bool(_split_dirs(folder))

  def _scan_pairs(self, root: pathlib.Path) -> dict[str, list[paired.Pair]]:
    splits: dict[str, list[paired.Pair]] = {}
    missing: list[paired.MissingTarget] = []
    bad_names: list[str] = []
    for split, split_dir in _split_dirs(root).items():
      input_dir = manual_layout.find_subdir(split_dir, INPUT_FOLDERS)
      target_dir = _target_folder(split_dir)
      targets = manual_layout.list_images(target_dir) if target_dir else {}
      target_label = paired.relative(
          target_dir or split_dir / 'GT_IMAGES', root)
      others = {}
      if split == 'test':
        for expert in OTHER_EXPERTS:
          folder = _expert_folder(split_dir, expert)
          if folder is not None:
            others[f'expert_{expert}'] = (folder,
                                          manual_layout.list_images(folder))
      pairs = []
      for stem, input_path in manual_layout.list_images(input_dir).items():
        input_label = paired.relative(input_path, root)
        try:
          scene, tag = ev_tags.split_scene_tag(stem)
        except ValueError:
          bad_names.append(input_label)
          continue
        target_path = targets.get(scene)
        if target_path is None:
          missing.append(paired.MissingTarget(
              f'{target_label}/{scene}.*', input_label, split))
        other_targets = []
        for name, (folder, images) in others.items():
          if scene in images:
            other_targets.append((name, images[scene]))
          else:
            missing.append(paired.MissingTarget(
                f'{paired.relative(folder, root)}/{scene}.*', input_label,
                split))
        if target_path is not None and len(other_targets) == len(others):
          pairs.append(paired.Pair(
              key=input_label, name=stem, scene=scene, input_path=input_path,
              target_path=target_path, ev_tag=tag, ev=ev_tags.tag_to_ev(tag),
              other_targets=tuple(other_targets)))
      splits[split] = pairs
    if bad_names:
      raise ValueError(
          f'msec: {len(bad_names)} input image(s) are not named '
          '<scene>_<tag> with an exposure tag (N1.5, N1, 0, P1, P1.5) after '
          f'the last underscore: {manual_layout.describe_list(bad_names)}. '
          'Rename or remove them.')
    self._report_missing(root, missing)
    return splits

