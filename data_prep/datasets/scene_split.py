"""Deterministic, scene-disjoint train/validation assignment by name hash.

Why a hash of the scene name: a scene's split then depends on nothing but its
name, not on the order files are listed in, the machine, or the Python process
(the built-in `hash()` of a string is salted per process, so it is not used).
Adding scenes to a folder never moves an existing scene to the other split,
except through the small-folder guarantee below.

Rule: a scene goes to 'validation' when the first 8 bytes of SHA-256(name),
read as an integer and divided by 2^64, are below `validation_fraction`; else
to 'train'. With at least two scenes both splits are guaranteed non-empty (TFDS
cannot write an empty split): if no scene fell in validation, the scene with
the smallest hash value moves there; if every scene did, the one with the
largest moves to train. With a single scene there is only a 'train' split.
"""

import hashlib
from typing import Iterable

TRAIN = 'train'
VALIDATION = 'validation'


def scene_hash_unit(scene: str) -> float:
  """The scene name's stable position in [0, 1)."""
  digest = hashlib.sha256(scene.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def assign_splits(scenes: Iterable[str],
                  validation_fraction: float) -> dict[str, str]:
  """Maps each scene name to 'train' or 'validation' (see module docstring).

  Args:
    scenes: distinct scene names.
    validation_fraction: the expected share of validation scenes, in (0, 1).

  Returns:
    scene -> split name.

  Raises:
    ValueError: the fraction is outside (0, 1) or a name repeats.
  """
  if not 0.0 < validation_fraction < 1.0:
    raise ValueError(
        f'validation_fraction must be in (0, 1), got {validation_fraction!r}.')
  scenes = list(scenes)
  if len(set(scenes)) != len(scenes):
    raise ValueError('Scene names must be distinct to split by scene.')
  units = {scene: scene_hash_unit(scene) for scene in scenes}
  splits = {scene: VALIDATION if unit < validation_fraction else TRAIN
            for scene, unit in units.items()}
  if len(scenes) >= 2:
    if VALIDATION not in splits.values():
      splits[min(scenes, key=units.__getitem__)] = VALIDATION
    if TRAIN not in splits.values():
      splits[max(scenes, key=units.__getitem__)] = TRAIN
  return splits


# The radiometry release's own split: scene lists in the dataset root.
TRAIN_LIST = 'train_input.txt'


def listed_scenes(path) -> set[str]:
  """Scene names of a list file: one per line, as a file name or path
  (folders and extension dropped); blank lines and '#' comments skipped."""
  names = set()
  for line in path.read_text().splitlines():
    line = line.split('#', 1)[0].strip()
    if line:
      names.add(line.replace('\\', '/').rsplit('/', 1)[-1].rsplit('.', 1)[0])
  return names


def assign_from_list_or_hash(scenes: Iterable[str], roots: Iterable,
                             validation_fraction: float
                             ) -> tuple[dict[str, str], str]:
  """(scene -> split, how it was decided) for a folder of sequences.

  With `TRAIN_LIST` in one of `roots` (the manual_dir and the layout roots
  below it; the radiometry release ships one in its root), its scenes are
  'train' and every other scene 'validation', so no scene the official
  weights were trained on is evaluated; otherwise the name hash above.
  """
  scenes = list(scenes)
  lists = sorted(root / TRAIN_LIST for root in set(roots)
                 if (root / TRAIN_LIST).is_file())
  list_path = lists[0] if lists else None
  if list_path is None:
    return (assign_splits(scenes, validation_fraction),
            f'name hash, validation_fraction={validation_fraction}')
  listed = listed_scenes(list_path)
  split_of = {scene: TRAIN if scene in listed else VALIDATION
              for scene in scenes}
  return split_of, (f'{list_path.name} (the release\'s list: '
                    f'{sum(s == TRAIN for s in split_of.values())} train, '
                    f'{sum(s == VALIDATION for s in split_of.values())} other '
                    'scenes in validation)')
