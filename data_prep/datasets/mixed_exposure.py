"""TFDS builder `mixed_exposure`: region-varying exposure rendered from RAW.

Each RAW file is decoded once (`raw_render.decode_raw`) and rendered K times
(`maps_per_raw`) with K smooth EV maps (`data_prep/mixed_exposure.py`):
inputs with over- and under-exposed regions, like LCDP's, whose target is
the EV 0 render of the same decode. Configs:
  sample: the embedded sample's RAWs (needs nothing), split by photo as the
    uniform `multi_exposure/sample` is, so no validation photo of one is a
    training photo of the other.
  raw: the RAW files in the manual directory (recursively), scene-disjoint
    deterministic splits (`scene_split`).

An example is a paired example (`paired.paired_features`: name
'<scene>_mixed<k>', input and target PNG bytes, ev_tag '' as LCDP, so
RECNet's loader and the evaluation read it as they read LCDP), plus:
  ev_map: float32 grid of the EV map, the truth the input was rendered
    from (`mixed_exposure.expand` gives it at full resolution);
  map_index: k; source: the RAW file name; camera.
"""

import dataclasses
import functools
import math
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from data_prep import camera_tags
from data_prep import image_codec
from data_prep import mixed_exposure as mixed_render
from data_prep import raw_render
from data_prep.datasets import raw_scenes
from data_prep.datasets import paired


@dataclasses.dataclass
class MixedExposureConfig(tfds.core.BuilderConfig):
  """A mixed-exposure variant.

  Attributes:
    source: 'sample' or 'raw' (see module docstring).
    maps_per_raw: EV maps (examples) per RAW file.
    ev_range: the EV range of the maps.
    seed: mixed into every RAW's content seed (other maps, same files).
    half_size: decode RAWs at half resolution.
    validation_fraction: share of scenes for validation ('raw').
  """
  source: str = 'raw'
  maps_per_raw: int = 3
  ev_range: tuple[float, float] = mixed_render.EV_RANGE
  seed: int = 0
  half_size: bool = False
  validation_fraction: float = 0.2


def scene_examples(scene: raw_scenes.RawScene, *, maps_per_raw: int,
                   seed: int, ev_range: tuple[float, float], half_size: bool
                   ) -> list[tuple[str, dict[str, Any]]] | None:
  """(key, example) of each of a RAW's mixed-exposure renders, all from one
  decode (a RAW in a bucket downloaded once); None (logged) when the RAW
  cannot be decoded."""
  with raw_scenes.decoded(scene, half_size) as opened:
    if opened is None:
      return None
    image, local = opened
    content_seed = mixed_render.content_seed(local, seed)
    camera = camera_tags.camera_name(local)
  target = image_codec.encode_png(raw_render.expose(image, 0.0))
  grids = mixed_render.draw_maps(image.height, image.width, maps_per_raw,
                                 content_seed, ev_range=ev_range)
  examples = []
  for index, grid in enumerate(grids):
    name = f'{scene.scene}_mixed{index}'
    examples.append((name, {
        'name': name,
        'scene': scene.scene,
        'input': image_codec.encode_png(mixed_render.render(image, grid)),
        'target': target,
        'ev_tag': '',
        'ev': np.float32(math.nan),
        'other_targets': [],
        'other_target_names': [],
        'ev_map': grid,
        'map_index': np.int32(index),
        'source': scene.source,
        'camera': camera,
    }))
  return examples


class MixedExposure(raw_scenes.BeamBuildMixin,
                    tfds.core.GeneratorBasedBuilder):
  """Mixed-exposure inputs rendered from RAW with their EV maps."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      MixedExposureConfig(name='sample', source='sample', maps_per_raw=2,
                          description='The embedded sample, 2 maps per RAW.'),
      MixedExposureConfig(name='raw', source='raw', maps_per_raw=3,
                          description='RAW files in the manual directory.'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Config 'raw': put RAW files (any LibRaw format) anywhere below the "
      "manual directory. Config 'sample' needs nothing.")

  def __init__(self, *, allow_incomplete: bool = False, **kwargs):
    """`allow_incomplete`: accepted for a uniform build API (no test split
    here: unreadable RAWs are always left out, and recorded)."""
    del allow_incomplete
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=paired.paired_features(
            ev_map=tfds.features.Tensor(shape=(None, None), dtype=np.float32,
                                        encoding='zlib'),
            map_index=tfds.features.Tensor(shape=(), dtype=np.int32),
            source=tfds.features.Text(),
            camera=tfds.features.Text()),
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    if self._beam_build:
      return self._beam_split_generators(dl_manager)
    scenes, split_of, left_out = raw_scenes.usable_raw_scenes(
        self, f'mixed_exposure/{config.name}', config.source, dl_manager,
        config.validation_fraction)
    by_split: dict[str, list[Any]] = {}
    for scene in scenes:
      by_split.setdefault(split_of[scene.scene], []).append(scene)
    self.info.metadata.update({
        'kept': {split: len(s) * config.maps_per_raw
                 for split, s in by_split.items()},
        'left_out': left_out})
    return {split: self._generate_examples(split_scenes)
            for split, split_scenes in sorted(by_split.items())}

  def _render(self):
    """`scene_examples` with this config's settings (picklable)."""
    config = self.builder_config
    return functools.partial(
        scene_examples, maps_per_raw=config.maps_per_raw, seed=config.seed,
        ev_range=tuple(config.ev_range), half_size=config.half_size)

  def _beam_split_generators(self, dl_manager):
    """The splits as Beam transforms (`raw_beam.ExampleSplits`): the local
    build's probe, split rule and renders, on Beam workers."""
    from data_prep.datasets import raw_beam  # pylint: disable=g-import-not-at-top
    config = self.builder_config
    dataset = f'mixed_exposure/{config.name}'
    scenes, assign = raw_scenes.listed_raw_scenes(
        self, dataset, config.source, dl_manager, config.validation_fraction)
    splits = raw_beam.ExampleSplits(
        scenes, render=self._render(), assign=assign, dataset=dataset,
        metadata_dir=self._beam_metadata_folder(),
        examples_per_scene=config.maps_per_raw)
    return {split: splits.transform(split) for split in splits.names}

  def _generate_examples(self, scenes) -> Iterator[tuple[str, dict[str, Any]]]:
    render = self._render()
    for scene in scenes:
      yield from render(scene) or ()
