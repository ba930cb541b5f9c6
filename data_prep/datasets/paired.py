"""What the paired builders (msec, sice, lcdp) share: features and checks.

A paired example is one input image and its target, stored as the files'
original bytes. Nothing is re-encoded, so a JPEG input keeps exactly the
pixels its authors published (re-encoding would add a second generation of
compression artefacts and change every metric computed on it).

Features:
  name: the input's file stem (e.g. 'a0001_N1.5'), unique per split.
  scene: the scene the input shows (MSEC: the stem before the last '_').
  input, target: encoded image bytes (JPEG/PNG/...), decoded elsewhere.
  ev_tag: the input's exposure tag (MSEC 'N1.5'..'P1.5', SICE 'low'/'over',
    LCDP '').
  ev: the input's relative EV as a float32, NaN where the layout does not say.
  other_targets, other_target_names: further reference images of the scene
    (MSEC test: the retouches of experts a, b, d, e; the target is expert C's),
    empty elsewhere.

Every input must have its target: a build fails, naming the missing target
files, rather than silently dropping inputs (a quietly smaller test set makes
results incomparable with published ones); with `allow_incomplete` the inputs
are left out and recorded instead. Every file is also decoded once while
building (`file_checks`): unusable files and size mismatches are left out of
train / validation and fail a test split (see `file_checks` for the policy).
"""

import dataclasses
import math
import os
import pathlib
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from data_prep.datasets import file_checks
from data_prep.datasets import manual_layout

VERSION = tfds.core.Version('1.0.0')
RELEASE_NOTES = {'1.0.0': 'Initial release.'}


def paired_features(**extra: tfds.features.FeatureConnector
                    ) -> tfds.features.FeaturesDict:
  """The feature spec every paired builder writes, plus `extra` fields."""
  encoded = tfds.features.Tensor(shape=(), dtype=np.object_)
  return tfds.features.FeaturesDict({
      **extra,
      'name': tfds.features.Text(),
      'scene': tfds.features.Text(),
      'input': encoded,
      'target': encoded,
      'ev_tag': tfds.features.Text(),
      'ev': tfds.features.Tensor(shape=(), dtype=np.float32),
      'other_targets': tfds.features.Sequence(encoded),
      'other_target_names': tfds.features.Sequence(tfds.features.Text()),
  })


@dataclasses.dataclass(frozen=True)
class Pair:
  """One input file, its target file and what the layout says about them.

  Attributes:
    key: unique within the split (the input's path below the layout root).
    name: the input's file stem.
    scene: the scene name.
    input_path: the input image file.
    target_path: the target image file.
    ev_tag: see module docstring.
    ev: see module docstring.
    other_targets: (name, file) of further references of the scene.
  """
  key: str
  name: str
  scene: str
  input_path: pathlib.Path
  target_path: pathlib.Path
  ev_tag: str = ''
  ev: float = math.nan
  other_targets: tuple[tuple[str, pathlib.Path], ...] = ()

  def to_example(self) -> dict[str, Any]:
    """Reads the files and returns the feature dict (bytes as stored)."""
    return {
        'name': self.name,
        'scene': self.scene,
        'input': self.input_path.read_bytes(),
        'target': self.target_path.read_bytes(),
        'ev_tag': self.ev_tag,
        'ev': np.float32(self.ev),
        'other_targets': [path.read_bytes() for _, path in self.other_targets],
        'other_target_names': [name for name, _ in self.other_targets],
    }


@dataclasses.dataclass(frozen=True)
class MissingTarget:
  """A target file that an input needs but the layout lacks."""
  expected: str  # e.g. 'training/GT_IMAGES/a0001.*'
  needed_by: str  # e.g. 'training/INPUT_IMAGES/a0001_N1.5.JPG'
  split: str = ''


def raise_if_missing(dataset: str, root: pathlib.Path,
                     missing: list[MissingTarget]) -> None:
  """Fails naming the missing targets (first few and a count) and the fix.

  Raises:
    FileNotFoundError: `missing` is not empty.
  """
  if not missing:
    return
  needed_by: dict[str, list[str]] = {}
  for item in missing:
    needed_by.setdefault(item.expected, []).append(item.needed_by)
  described = [f'{expected} (needed by {", ".join(inputs[:2])}'
               f'{" ..." if len(inputs) > 2 else ""})'
               for expected, inputs in sorted(needed_by.items())]
  raise FileNotFoundError(
      f'{dataset}: {len(needed_by)} target file(s) missing under {root}, '
      f'needed by {len(missing)} input(s): '
      f'{manual_layout.describe_list(described)}. Fix: copy the missing target '
      'files in (any image extension; the name must match), or delete the '
      'inputs that need them, then rebuild; or build anyway with '
      '--allow_incomplete, which leaves those inputs out and records them.')


def relative(path: pathlib.Path, root: pathlib.Path) -> str:
  """`path` below `root`, with '/' separators, for keys and messages."""
  return pathlib.Path(os.path.relpath(path, root)).as_posix()


def _pair_problem(pair: Pair, sizes: dict, root: pathlib.Path) -> str | None:
  """Why `pair` cannot be used (None if it can): unusable or mismatched."""
  targets = [('target', pair.target_path)] + [
      (name, path) for name, path in pair.other_targets]
  for what, path in targets:
    if isinstance(sizes[path], str):
      return f'its {what} {relative(path, root)} is unusable: {sizes[path]}'
  if isinstance(sizes[pair.input_path], str):
    return f'unusable: {sizes[pair.input_path]}'
  height, width = sizes[pair.input_path]
  for what, path in targets:
    if sizes[path] != (height, width):
      other_height, other_width = sizes[path]
      return (f'the input is {width}x{height} but its {what} '
              f'{relative(path, root)} is {other_width}x{other_height} '
              '(after EXIF orientation); a pair is never stretched to fit')
  return None


class PairedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the paired builders: finds the layout, checks, yields pairs.

  Subclasses set `_EXPECTED_LAYOUT` (a description for messages) and
  implement `_is_layout_root` and `_scan_pairs`.
  """

  VERSION = VERSION
  RELEASE_NOTES = RELEASE_NOTES
  _EXPECTED_LAYOUT = ''

  def __init__(self, *, allow_incomplete: bool = False, **kwargs):
    """`allow_incomplete`: build even with missing targets or a bad test
    split, leaving those examples out and recording them."""
    self._allow_incomplete = allow_incomplete
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__, features=paired_features(),
        metadata=tfds.core.MetadataDict())

  @property
  def _label(self) -> str:
    config = self.builder_config
    return self.name if config is None else f'{self.name}/{config.name}'

  def _report_missing(self, root: pathlib.Path,
                      missing: list[MissingTarget]) -> None:
    """Fails naming the missing targets, or records them when allowed."""
    if not self._allow_incomplete:
      raise_if_missing(self._label, root, missing)
    for item in missing:
      self._omissions.add(item.split, item.needed_by,
                          f'its target {item.expected} is missing')

  def _is_layout_root(self, folder: pathlib.Path) -> bool:
    raise NotImplementedError

  def _scan_pairs(self, root: pathlib.Path) -> dict[str, list[Pair]]:
    """Split name -> pairs; raises if targets are missing or names are bad."""
    raise NotImplementedError

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = pathlib.Path(os.fspath(dl_manager.manual_dir))
    root = manual_layout.find_layout_root(
        manual_dir, self._is_layout_root, dataset=self.name,
        expected=self._EXPECTED_LAYOUT)
    self._omissions = file_checks.Omissions(self._label,
                                            self._allow_incomplete)
    splits = {split: pairs for split, pairs in self._scan_pairs(root).items()
              if pairs}
    if not splits:
      raise FileNotFoundError(
          f'{self.name}: the layout at {root} holds no input images. '
          f'Expected: {self._EXPECTED_LAYOUT}.')
    splits = self._screen(root, splits)
    return {split: self._generate_examples(pairs)
            for split, pairs in splits.items() if pairs}

  def _screen(self, root: pathlib.Path, splits: dict[str, list[Pair]]
              ) -> dict[str, list[Pair]]:
    """Decodes every file once; keeps the usable pairs (`file_checks`)."""
    sizes = file_checks.decode_all(
        path for pairs in splits.values() for pair in pairs
        for path in (pair.input_path, pair.target_path,
                     *(p for _, p in pair.other_targets)))
    kept = {}
    for split, pairs in splits.items():
      kept[split] = []
      for pair in pairs:
        reason = _pair_problem(pair, sizes, root)
        if reason is None:
          kept[split].append(pair)
        else:
          self._omissions.add(split, pair.key, reason)
    self._omissions.finish({split: len(p) for split, p in kept.items()})
    self.info.metadata.update(self._omissions.metadata())
    return kept

  def _generate_examples(self, pairs: list[Pair]
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    for pair in pairs:
      yield pair.key, pair.to_example()
