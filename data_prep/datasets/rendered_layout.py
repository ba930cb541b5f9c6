"""Finding already-rendered exposure sequences in a folder.

Two layouts are recognised (in the folder given or up to two levels below):
  flat, as `python -m data_prep.render_raw` writes it: `<scene>_<tag>.png`
    (or .jpg, ...) with MSEC tags (N1.5, N1, 0, P1, P1.5), split on the last
    underscore; its `<scene>.json` entries, where present, give the camera
    and the source RAW.
  per-EV folders, as the UEC radiometry data: `<tag>/<name>` with folders
    named neg3, neg2, neg1, 0, pos1, pos2, pos3 (MSEC tags work too); the
    scene is the file stem.

Every scene of a build must have the same EV list (training samples pairs of
EVs by position), so scenes missing one of the wanted EVs are logged and
skipped; wanted = the EVs asked for, or else the EV list most scenes have.
Frames are stored as their decode gives them (`image_codec.read_image`).
"""

import collections
import dataclasses
import json
import pathlib
from typing import Any, Sequence

from absl import logging
import numpy as np

from data_prep import ev_tags
from data_prep import image_codec
from data_prep import render_raw
from data_prep import camera_tags
from data_prep.datasets import file_checks
from data_prep.datasets import manual_layout

EXPECTED_LAYOUT = ('<scene>_<tag>.png files (render_raw output) or '
                   '{neg3,neg2,neg1,0,pos1,pos2,pos3}/<name> folders')


@dataclasses.dataclass(frozen=True)
class RenderedScene:
  """One scene's frames, ascending in EV, with what is known of its origin."""
  scene: str
  frames: tuple[tuple[float, pathlib.Path], ...]
  camera: str = ''
  source: str = ''

  def fields(self) -> dict[str, Any]:
    """The scene's fields in `multi_exposure`'s scene table."""
    return {'scene': self.scene, 'evs': [ev for ev, _ in self.frames],
            'camera': self.camera, 'source': self.source}

  def to_frames(self) -> tuple[dict[str, Any], list[np.ndarray]]:
    """(scene fields, decoded frames in EV order) for `multi_exposure`'s
    scene table and tiles; fails if frame sizes differ."""
    frames = [image_codec.read_image(path) for _, path in self.frames]
    sizes = {path: frame.shape[:2]
             for (_, path), frame in zip(self.frames, frames)}
    if len(set(sizes.values())) != 1:
      raise ValueError(
          f'Scene {self.scene!r}: its frames differ in size: '
          + ', '.join(f'{p.name} {w}x{h}' for p, (h, w) in sizes.items()))
    return self.fields(), frames

  def checked_frames(self) -> tuple[dict[str, Any], list[np.ndarray]] | str:
    """Each frame decoded once (`file_checks.decode_file`): (fields,
    frames) as `to_frames` gives them, or the reason the scene is unusable,
    as `scene_problem` words it (for builds that check and store in one
    pass, as a Beam worker does)."""
    decoded = {path: file_checks.decode_file(path) for _, path in self.frames}
    reason = scene_problem(self, {path: file_checks.decoded_size(image)
                                  for path, image in decoded.items()})
    if reason is not None:
      return reason
    return self.fields(), [decoded[path] for _, path in self.frames]


def scene_problem(scene: RenderedScene, sizes: dict) -> str | None:
  """Why a scene cannot be used, given `file_checks.decode_all`'s results of
  its frames (None if it can): an unusable frame, or frames of other sizes."""
  for _, path in scene.frames:
    if isinstance(sizes[path], str):
      return f'frame {path.parent.name}/{path.name} is unusable: {sizes[path]}'
  found = {sizes[path] for _, path in scene.frames}
  if len(found) > 1:
    return 'its frames differ in size after decoding: ' + ', '.join(
        f'{path.parent.name}/{path.name} {sizes[path][1]}x{sizes[path][0]}'
        for _, path in scene.frames)
  return None


def _tag_folders(folder: pathlib.Path) -> dict[float, pathlib.Path]:
  return {ev_tags.tag_to_ev(child.name): child
          for child in sorted(folder.iterdir())
          if child.is_dir() and ev_tags.is_tag(child.name)}


def _flat_frames(folder: pathlib.Path) -> dict[str, dict[float, pathlib.Path]]:
  """scene -> {ev: file} for `<scene>_<tag>.<ext>` images in `folder`."""
  scenes: dict[str, dict[float, pathlib.Path]] = {}
  for stem, path in manual_layout.list_images(folder).items():
    scene, _, tag = stem.rpartition('_')
    if scene and ev_tags.is_tag(tag):
      scenes.setdefault(scene, {})[ev_tags.tag_to_ev(tag)] = path
  return scenes


def _is_layout_root(folder: pathlib.Path) -> bool:
  return len(_tag_folders(folder)) >= 2 or bool(_flat_frames(folder))


def _render_entry(folder: pathlib.Path, scene: str) -> tuple[str, str]:
  """(camera, source file name) from render_raw's `<scene>.json`, if any."""
  try:
    entry = json.loads((folder / f'{scene}.json').read_text())
  except (OSError, ValueError):
    return '', ''
  if not isinstance(entry, dict) or entry.get('format') != render_raw.FORMAT:
    return '', ''
  return (camera_tags.camera_label(entry.get('camera') or {}),
          pathlib.Path(entry.get('source', '')).name)


def _wanted_evs(scenes: dict[str, dict[float, pathlib.Path]],
                evs: Sequence[float] | None) -> tuple[float, ...]:
  if evs is not None:
    return tuple(sorted(evs))
  counts = collections.Counter(tuple(sorted(f)) for f in scenes.values())
  return max(counts, key=lambda key: (counts[key], len(key), key))


def find_sequences(manual_dir: pathlib.Path,
                   evs: Sequence[float] | None = None) -> list[RenderedScene]:
  """The scenes of a rendered folder, sorted by name (see module docstring).

  Args:
    manual_dir: the folder holding a layout (or one up to two levels below).
    evs: the EVs to keep; None keeps the EV list most scenes have.

  Raises:
    FileNotFoundError: no layout, or no scene has all wanted EVs.
  """
  root = manual_layout.find_layout_root(
      manual_dir, _is_layout_root, dataset='multi_exposure/rendered',
      expected=EXPECTED_LAYOUT)
  tag_folders = _tag_folders(root)
  scenes: dict[str, dict[float, pathlib.Path]] = {}
  if len(tag_folders) >= 2:
    for ev, folder in tag_folders.items():
      for stem, path in manual_layout.list_images(folder).items():
        scenes.setdefault(stem, {})[ev] = path
  else:
    scenes = _flat_frames(root)
  if not scenes:
    raise FileNotFoundError(
        f'multi_exposure/rendered: no images in {root}. Expected: '
        f'{EXPECTED_LAYOUT}.')
  wanted = _wanted_evs(scenes, evs)
  sequences, incomplete = [], []
  for scene, frames in sorted(scenes.items()):
    if not set(wanted) <= set(frames):
      incomplete.append(scene)
      continue
    camera, source = ('', '') if len(tag_folders) >= 2 else _render_entry(
        root, scene)
    first = frames[wanted[0]]
    sequences.append(RenderedScene(
        scene=scene, frames=tuple((ev, frames[ev]) for ev in wanted),
        camera=camera,
        source=source or first.relative_to(root.parent).as_posix()))
  if incomplete:
    logging.warning(
        'multi_exposure/rendered: skipping %d scene(s) without all of the EVs '
        '%s: %s', len(incomplete), list(wanted),
        manual_layout.describe_list(incomplete))
  if not sequences:
    raise FileNotFoundError(
        f'multi_exposure/rendered: no scene in {root} has all of the EVs '
        f'{list(wanted)}.')
  return sequences
