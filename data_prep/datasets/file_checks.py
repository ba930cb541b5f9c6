"""Every source image decoded once while a dataset builds; bad ones named.

A download of thousands of photos often holds a few broken files (a
truncated JPEG, a 0-byte file, a text file named .png). The builders store
the files' own bytes, so a broken one would otherwise be found hours into
training, inside a data-loader worker. Here each file is decoded once with
`image_codec.decode_image` (the project's one image normalisation, also
refusing images over the pixel cap before decoding), in parallel threads
(decoding is the slow part and Pillow / OpenCV release the GIL), and what
cannot be used is named with the reason.

The builders then apply one policy (`Omissions`):
  - train / validation: a bad input is left out; a bad target leaves out
    every input that needs it, with one message; an input whose target has
    another size after decoding (EXIF orientation applied) is reported and
    left out, never stretched to fit. The build succeeds unless nothing is
    left, and logs a summary.
  - test (a published benchmark's): a smaller test set is not comparable
    with published figures, so any bad or missing file fails the build,
    naming every one at once, unless the build is asked to go on
    (`--allow_incomplete`); the omissions are then recorded.
Omissions are written to the dataset's `metadata.json` (in the dataset
folder, read back by `data_prep.build.omissions`) and every evaluation
report made from the dataset repeats them.
"""

import concurrent.futures
import dataclasses
import os
import pathlib
from typing import Iterable, Sequence

from absl import logging
import numpy as np

from data_prep import image_codec

TEST_SPLIT = 'test'
_SHOWN = 20  # Bad files listed in one message before '... and N more'.


@dataclasses.dataclass(frozen=True)
class Omission:
  """One example left out of a split, and why."""
  split: str
  example: str  # The input's path below the layout root (or the scene).
  reason: str

  def as_dict(self) -> dict[str, str]:
    return dataclasses.asdict(self)


def decode_file(path: pathlib.Path) -> np.ndarray | str:
  """The decoded image (`image_codec.decode_image`), or the reason the file
  is unusable."""
  try:
    data = path.read_bytes()
  except OSError as e:
    return f'unreadable ({e.strerror or e})'
  try:
    return image_codec.decode_image(data)
  except image_codec.ImageDecodeError as e:
    return str(e)


def decoded_size(decoded: np.ndarray | str) -> tuple[int, int] | str:
  """(height, width) of what `decode_file` gave, or its reason."""
  if isinstance(decoded, str):
    return decoded
  return decoded.shape[0], decoded.shape[1]


def _decoded_size(path: pathlib.Path) -> tuple[int, int] | str:
  """(height, width) after decoding, or the reason the file is unusable."""
  return decoded_size(decode_file(path))


def decode_all(paths: Iterable[pathlib.Path]
               ) -> dict[pathlib.Path, tuple[int, int] | str]:
  """Each distinct file -> its decoded (height, width) or why it failed."""
  unique = sorted(set(paths))
  workers = min(32, (os.cpu_count() or 1) + 2)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    results = list(pool.map(_decoded_size, unique))
  return dict(zip(unique, results))


def describe(items: Sequence[str]) -> str:
  shown = '; '.join(items[:_SHOWN])
  more = len(items) - _SHOWN
  return shown + (f'; ... and {more} more' if more > 0 else '')


class Omissions:
  """Collects a build's omissions and applies the split policy above."""

  def __init__(self, dataset: str, allow_incomplete: bool):
    self._dataset = dataset
    self._allow_incomplete = allow_incomplete
    self.items: list[Omission] = []
    self.kept: dict[str, int] = {}

  def add(self, split: str, example: str, reason: str) -> None:
    self.items.append(Omission(split, example, reason))

  def finish(self, kept: dict[str, int]) -> None:
    """Logs the summary; fails as the policy says (see module).

    Raises:
      ValueError: bad or missing files in a test split (without
        allow_incomplete), naming every one; or nothing left at all.
    """
    self.kept = dict(kept)
    blocking = [o for o in self.items if o.split == TEST_SPLIT]
    if blocking and not self._allow_incomplete:
      raise ValueError(
          f'{self._dataset}: the {TEST_SPLIT} split has {len(blocking)} bad '
          'or missing file(s); a smaller test set is not comparable with '
          'published results, so the build stops: '
          + describe([f'{o.example}: {o.reason}' for o in blocking])
          + '. Replace the files (re-download them) and rebuild, or build '
          'anyway with --allow_incomplete (python -m data_prep.build), '
          'which records what was left out in the dataset and in every '
          'evaluation report made from it.')
    for split in sorted({o.split for o in self.items}):
      left_out = [o for o in self.items if o.split == split]
      logging.warning(
          '%s/%s: left out %d example(s): %s', self._dataset, split,
          len(left_out),
          describe([f'{o.example}: {o.reason}' for o in left_out]))
    logging.info('%s: kept %s; left out %d example(s).', self._dataset,
                 ', '.join(f'{split} {n}' for split, n in sorted(kept.items())),
                 len(self.items))
    if not any(kept.values()):
      raise ValueError(
          f'{self._dataset}: no usable example is left ('
          f'{len(self.items)} left out; see the messages above).')

  def metadata(self) -> dict:
    """What `metadata.json` records: kept counts and every omission."""
    return {'kept': self.kept,
            'left_out': [o.as_dict() for o in self.items]}
