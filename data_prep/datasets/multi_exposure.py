"""TFDS builder `multi_exposure`: exposure sequences, each scene's frames in EV order.

Configs (the source of the scenes):
  sample (default): the embedded sample scenes (`data_prep.sample_scenes`),
    written as DNG files to a temporary folder and then built exactly as
    'raw' builds a folder, so the sample exercises the real RAW path.
  raw: the RAW files in the manual directory (searched recursively, RAW
    extensions only), each decoded once and rendered at MSEC's EVs
    (-1.5, -1, 0, +1, +1.5), 8 bits. 'raw_radiometry' renders -3..+3 like the
    UEC radiometry data; 'raw_16bit' writes 16-bit PNGs. Other EVs, bit
    depths, tone curves or half-size decodes: pass a `MultiExposureConfig`.
  rendered: already-rendered sequences in the manual directory, as
    `python -m data_prep.render_raw` writes them (`<scene>_<tag>.png`) or in
    the UEC radiometry layout (`{neg3,..,0,..,pos3}/<name>`); see
    `rendered_layout`. Frames are stored as their files decode.

Storage (2.0.0, `data_prep.tiled_frames`): every frame as 128x128 tiles of
raw pixels, one record per tile (feature `tile`: bytes), so that a training
crop reads and decodes only the tiles it touches. The pixels are those a
decode of the render (8-bit, or 16-bit when bits=16) or of the rendered file
(`image_codec.decode_image`) gives. The metadata's scene table says which
records hold which frame; read a split with `data_prep.build.data_source`,
which gives one record per scene:
  scene: the scene name (the RAW's file stem).
  frames: one `tiled_frames.TiledFrame` per EV, in `evs` order (`.crop(top,
    left, height, width)`, `.decode()`).
  evs: float32 exposures relative to as-shot, ascending; the same list for
    every scene of a build.
  camera: 'make model' from the RAW's tags ('' where unknown).
  height, width: int32 size of every frame.
  source: 'sample', or the file the scene came from.
Version 1.1.0 held whole encoded frames in one record per scene; it is not
read any more (a prepared 1.1.0 dataset is rebuilt beside it).

Splits are scene-disjoint by construction (a scene is in one split): 'sample'
uses `sample_scenes.sample_split`; folders use `scene_split.assign_splits`, a
SHA-256 hash of the scene name against `validation_fraction` (default 0.1),
with at least one validation scene when there are two or more scenes. With a
single scene only 'train' exists. Unreadable RAWs are logged and skipped; the
build fails only when no RAW is usable.
"""

import dataclasses
import functools
import math
import os
import pathlib
from typing import Any, Iterator, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from data_prep import ev_tags
from data_prep import raw_render
from data_prep import storage
from data_prep import tiled_frames
from data_prep import camera_tags
from data_prep.datasets import file_checks
from data_prep.datasets import raw_scenes
from data_prep.datasets import rendered_layout
from data_prep.datasets import scene_split

SOURCES = ('sample', 'raw', 'rendered')
RADIOMETRY_EVS = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
DEFAULT_VALIDATION_FRACTION = 0.1


@dataclasses.dataclass
class MultiExposureConfig(tfds.core.BuilderConfig):
  """What a `multi_exposure` build reads and how it renders it.

  Attributes:
    source: 'sample', 'raw' or 'rendered' (see module docstring).
    evs: exposures to render (sorted on construction). For 'rendered': the
      EVs to keep, or None for the EV list most scenes have.
    bits: 8 or 16 bits per channel of rendered PNGs (sample/raw).
    tone_curve: 'none' or 'camera' (see `raw_render`).
    half_size: decode RAWs at half resolution (faster, 1/4 the pixels).
    validation_fraction: expected share of validation scenes (folders).
  """
  source: str = 'raw'
  evs: tuple[float, ...] | None = ev_tags.MSEC_EVS
  bits: int = 8
  tone_curve: str = 'none'
  half_size: bool = False
  validation_fraction: float = DEFAULT_VALIDATION_FRACTION

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f'source must be one of {SOURCES}, got {self.source!r}.')
    if self.evs is None:
      if self.source != 'rendered':
        raise ValueError(f'Config {self.name!r}: give the EVs to render.')
    else:
      evs = tuple(sorted(float(ev) for ev in self.evs))
      if not evs or len(set(evs)) != len(evs) or not all(map(math.isfinite,
                                                              evs)):
        raise ValueError(f'Config {self.name!r}: EVs must be distinct finite '
                         f'numbers, got {self.evs!r}.')
      self.evs = evs
    if self.bits not in raw_render.BIT_DEPTHS:
      raise ValueError(f'bits must be 8 or 16, got {self.bits!r}.')
    if self.tone_curve not in raw_render.TONE_CURVES:
      raise ValueError(f'tone_curve must be one of {raw_render.TONE_CURVES}, '
                       f'got {self.tone_curve!r}.')
    if not 0.0 < self.validation_fraction < 1.0:
      raise ValueError('validation_fraction must be in (0, 1), got '
                       f'{self.validation_fraction!r}.')


def multi_exposure_features() -> tfds.features.FeaturesDict:
  """The feature spec of `multi_exposure`: one tile per record."""
  return tfds.features.FeaturesDict({
      tiled_frames.TILE_FEATURE: tfds.features.Tensor(shape=(),
                                                      dtype=np.object_),
  })


def render_raw_scene(scene: raw_scenes.RawScene, evs: Sequence[float], bits: int,
                     tone_curve: str, half_size: bool
                     ) -> tuple[dict[str, Any], list[np.ndarray]] | None:
  """(scene fields, frames in `evs` order) of one RAW, decoded once and
  rendered at every EV; None (logged) when the RAW cannot be decoded.
  A RAW in a bucket is downloaded once (`raw_scenes.decoded`)."""
  with raw_scenes.decoded(scene, half_size) as opened:
    if opened is None:
      return None
    image, local = opened
    camera = camera_tags.camera_name(local)
  renders = raw_render.render_exposures(image, evs, bits=bits,
                                        tone_curve=tone_curve)
  return ({'scene': scene.scene, 'evs': list(evs), 'camera': camera,
           'source': scene.source}, [renders[ev] for ev in evs])


class MultiExposure(raw_scenes.BeamBuildMixin, tfds.core.GeneratorBasedBuilder):
  """Multi-exposure sequences rendered from RAW (or already rendered), their
  frames stored as tiles (see the module docstring)."""

  name = 'multi_exposure'
  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '1.1.0': 'Sample captures metered to 18% grey (equally exposed EV 0).',
      '2.0.0': 'Frames stored as 128x128 tiles of raw pixels, one record per '
               'tile, so that a crop reads only the tiles it touches.',
  }
  BUILDER_CONFIGS = [
      MultiExposureConfig(
          name='sample', source='sample',
          description='The embedded sample scenes, at MSEC EVs, 8-bit.'),
      MultiExposureConfig(
          name='raw', source='raw',
          description='RAW files of the manual dir, at MSEC EVs, 8-bit.'),
      MultiExposureConfig(
          name='raw_radiometry', source='raw', evs=RADIOMETRY_EVS,
          description='RAW files of the manual dir, at -3..+3 EV, 8-bit.'),
      MultiExposureConfig(
          name='raw_16bit', source='raw', bits=16,
          description='RAW files of the manual dir, at MSEC EVs, 16-bit.'),
      MultiExposureConfig(
          name='rendered', source='rendered', evs=None,
          description='Rendered sequences (<scene>_<tag>.png, or the UEC '
                      'radiometry layout) of the manual dir, as stored.'),
  ]
  DEFAULT_CONFIG_NAME = 'sample'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Config 'raw*': put RAW files (any LibRaw format; folders are searched "
      "recursively) in the manual directory. Config 'rendered': put the "
      'output of `python -m data_prep.render_raw` (<scene>_<tag>.png) or a '
      'UEC radiometry folder ({neg3,neg2,neg1,0,pos1,pos2,pos3}/<name>) '
      "there. Config 'sample' needs nothing.")

  def __init__(self, *, allow_incomplete: bool = False, **kwargs):
    """`allow_incomplete` is accepted for a uniform build API; these
    datasets have no test split, so unusable scenes are always left out."""
    del allow_incomplete
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=multi_exposure_features(),
        # Tiles are found by position: records stay in key (write) order.
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict({
            tiled_frames.LAYOUT_KEY: tiled_frames.layout_metadata(),
            tiled_frames.SCENE_TABLE: {}}))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    if self._beam_build:
      return self._beam_split_generators(dl_manager)
    if config.source == 'rendered':
      return self._rendered_split_generators(
          pathlib.Path(os.fspath(dl_manager.manual_dir)))
    scenes, split_of, left_out = raw_scenes.usable_raw_scenes(
        self, f'multi_exposure/{config.name}', config.source, dl_manager,
        config.validation_fraction)
    kept: dict[str, int] = {}
    for scene in scenes:
      kept[split_of[scene.scene]] = kept.get(split_of[scene.scene], 0) + 1
    self.info.metadata.update({'kept': kept, 'left_out': left_out})
    return self._group(scenes, split_of)

  def _beam_split_generators(self, dl_manager):
    """The splits as Beam transforms: `raw_beam.TiledSplits`, the same
    probe, split rule, renders and scene tables as the local build."""
    from data_prep.datasets import raw_beam  # pylint: disable=g-import-not-at-top
    config = self.builder_config
    dataset = f'multi_exposure/{config.name}'
    if config.source == 'rendered':
      if storage.is_remote(dl_manager.manual_dir):
        raise ValueError(
            f'{dataset} on Beam reads a local folder of rendered sequences, '
            f'not {dl_manager.manual_dir}; build it without '
            '--beam_pipeline_options (a bucket folder is then copied down), '
            'or build the RAWs with a raw config.')
      scenes, split_of = self._rendered_scenes(
          pathlib.Path(os.fspath(dl_manager.manual_dir)))
      splits = raw_beam.listed_tiled_splits(
          [(split_of[scene.scene], scene) for scene in scenes],
          render=rendered_layout.RenderedScene.checked_frames,
          dataset=dataset, metadata_dir=self._beam_metadata_folder())
    else:
      scenes, assign = raw_scenes.listed_raw_scenes(
          self, dataset, config.source, dl_manager,
          config.validation_fraction)
      splits = raw_beam.raw_tiled_splits(
          scenes, assign=assign, dataset=dataset,
          metadata_dir=self._beam_metadata_folder(),
          render=functools.partial(
              render_raw_scene, evs=config.evs, bits=config.bits,
              tone_curve=config.tone_curve, half_size=config.half_size))
    return {split: splits.transform(split) for split in splits.names}

  def _group(self, scenes, split_of) -> dict[str, Any]:
    """split -> generator over that split's scenes (empty splits left out)."""
    by_split: dict[str, list[Any]] = {}
    for scene in scenes:
      by_split.setdefault(split_of[scene.scene], []).append(scene)
    if scene_split.VALIDATION not in by_split:
      logging.warning(
          'multi_exposure/%s: only %d usable scene(s), so there is no '
          'validation split; add scenes to get one.', self.builder_config.name,
          len(scenes))
    return {split: self._generate_examples(split_scenes, split)
            for split, split_scenes in sorted(by_split.items())}

  def _generate_raw_examples(self, scenes: Sequence[raw_scenes.RawScene],
                             table: tiled_frames.SceneTableWriter
                             ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Decodes each RAW once and renders every EV of the config from it."""
    config = self.builder_config
    yielded = 0
    for scene in scenes:
      rendered = render_raw_scene(scene, config.evs, config.bits,
                                  config.tone_curve, config.half_size)
      if rendered is not None:
        yield from table.add_scene(*rendered)
        yielded += 1
    if scenes and not yielded:
      raise ValueError(
          f'None of the RAW files {[s.path.name for s in scenes]} could be '
          'decoded (see the warnings above).')

  def _rendered_scenes(self, manual_dir: pathlib.Path
                       ) -> tuple[list[rendered_layout.RenderedScene],
                                  dict[str, str]]:
    """The rendered folder's scenes and their splits (recorded in the
    metadata's 'split_source')."""
    config = self.builder_config
    scenes = rendered_layout.find_sequences(manual_dir, evs=config.evs)
    roots = {manual_dir} | {path.parent.parent for scene in scenes
                            for _, path in scene.frames[:1]}
    split_of, split_source = scene_split.assign_from_list_or_hash(
        [s.scene for s in scenes], roots, config.validation_fraction)
    self.info.metadata['split_source'] = split_source
    return scenes, split_of

  def _rendered_split_generators(self, manual_dir: pathlib.Path):
    config = self.builder_config
    scenes, split_of = self._rendered_scenes(manual_dir)
    omissions = file_checks.Omissions(f'multi_exposure/{config.name}',
                                      allow_incomplete=False)
    sizes = file_checks.decode_all(
        path for scene in scenes for _, path in scene.frames)
    usable = []
    for scene in scenes:
      reason = rendered_layout.scene_problem(scene, sizes)
      if reason is None:
        usable.append(scene)
      else:
        omissions.add(split_of[scene.scene], scene.scene, reason)
    kept: dict[str, int] = {}
    for scene in usable:
      kept[split_of[scene.scene]] = kept.get(split_of[scene.scene], 0) + 1
    omissions.finish(kept)
    self.info.metadata.update(omissions.metadata())
    return self._group(usable, split_of)

  def _generate_examples(self, scenes: Sequence[Any], split: str
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    """The split's tiles; its scene table goes to the metadata."""
    scenes = tiled_frames.scene_order(split, scenes)
    table = tiled_frames.SceneTableWriter(len(scenes))
    self.info.metadata[tiled_frames.SCENE_TABLE][split] = table.scenes
    if self.builder_config.source == 'rendered':
      for scene in scenes:
        fields, frames = scene.to_frames()
        yield from table.add_scene(fields, frames)
    else:
      yield from self._generate_raw_examples(scenes, table)
