"""RAW files as the scenes of a build, shared by the RAW-rendering builders.

`multi_exposure` (raw configs and the sample) and `mixed_exposure` read the
same kind of source: RAW files below the manual directory (or the embedded
sample's DNGs), each probed with LibRaw before anything is rendered, the
unreadable ones left out and recorded, the readable ones split by scene
(`scene_split`, or by photo for the sample). Here is that common part, for
the local build (`usable_raw_scenes`) and for the Beam build
(`listed_raw_scenes` and the split rule, applied in the pipeline by
`raw_beam`), and `BeamBuildMixin`, what a builder needs to build on Beam.
A RAW may be in a bucket (gs://...): it is read through a local copy
(`storage.local_copy`), since LibRaw reads local files only.
"""

import concurrent.futures
import contextlib
import dataclasses
import functools
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable, Iterator, Sequence
import weakref

from absl import logging
from etils import epath
import rawpy
import tensorflow_datasets as tfds

from data_prep import raw_render
from data_prep import render_raw
from data_prep import sample_scenes
from data_prep import storage
from data_prep import tfds_spill
from data_prep.datasets import file_checks
from data_prep.datasets import scene_split


@dataclasses.dataclass(frozen=True)
class RawScene:
  """A RAW file to build one example from (`path` local, or an
  `epath.Path` in a bucket)."""
  scene: str
  path: Any
  source: str


def probe_raw(path: pathlib.Path) -> str | None:
  """Why LibRaw cannot read `path` (None when it can).

  Reads and unpacks the sensor data (truncated or corrupt files fail here)
  without the costly demosaic, so splits can be chosen among usable scenes
  before anything is rendered.
  """
  try:
    with storage.local_copy(path) as local:
      with rawpy.imread(os.fspath(local)) as raw:
        raw.unpack()
  except (rawpy.LibRawError, OSError, ValueError) as e:
    return f'{type(e).__name__}: {e}'
  return None


@contextlib.contextmanager
def decoded(scene: RawScene, half_size: bool
            ) -> Iterator[tuple[raw_render.LinearImage, Any] | None]:
  """The scene's RAW decoded once (`raw_render.decode_raw`), with a local
  path of its file for readers of its tags or bytes (a RAW in a bucket is
  downloaded once, `storage.local_copy`): yields (image, local path), or
  None (logged) when the RAW cannot be decoded."""
  with storage.local_copy(scene.path) as local:
    try:
      image = raw_render.decode_raw(local, half_size=half_size)
    except raw_render.RawDecodeError as e:
      logging.warning('Skipping RAW %s: %s', scene.path, e)
      yield None
      return
    yield image, local


def usable_raws(scenes: Sequence[RawScene],
                left_out: list[tuple[RawScene, str]] | None = None
                ) -> list[RawScene]:
  """The scenes whose RAW probes fine (probed in parallel threads); logs the
  others with the reason, and appends (scene, reason) to `left_out`.

  Raises:
    ValueError: no RAW is usable; the message lists why each failed.
  """
  usable, failures = [], []
  workers = min(16, (os.cpu_count() or 1) + 2)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    reasons = list(pool.map(lambda scene: probe_raw(scene.path), scenes))
  for scene, reason in zip(scenes, reasons):
    if left_out is not None and reason is not None:
      left_out.append((scene, reason))
    if reason is None:
      usable.append(scene)
    else:
      logging.warning('Skipping RAW %s: %s', scene.path, reason)
      failures.append((scene, reason))
  if not usable:
    raise ValueError(no_usable_raw_message(len(scenes), failures))
  return usable


def no_usable_raw_message(total: int,
                          failures: Sequence[tuple[RawScene, str]]) -> str:
  """The error of a build none of whose `total` RAWs can be read."""
  named = '; '.join(f'{scene.path.name} ({reason})'
                    for scene, reason in failures[:10])
  return (f'None of the {total} RAW file(s) can be read: {named}. Re-copy '
          'them or give other files.')


def omission_record(scene: RawScene, reason: str) -> dict[str, str]:
  """How the dataset's metadata records an unreadable RAW (left out before
  the scenes are split, hence no split)."""
  return file_checks.Omission('', scene.source, reason).as_dict()


def sample_splits(names: Sequence[str]) -> dict[str, str]:
  """scene -> split of the embedded sample's scenes (by photo)."""
  return {name: sample_scenes.sample_split(name) for name in names}


def beam_requested(download_config: tfds.download.DownloadConfig) -> bool:
  """Whether a build was given Beam options or a runner (TFDS's
  `DownloadConfig`); the RAW builders then render on Beam (`raw_beam`)."""
  return (download_config.beam_options is not None or
          download_config.beam_runner is not None)


class BeamBuildMixin:
  """What a RAW builder needs to render on Beam when asked (`raw_beam`):
  it notes whether the build has Beam options, and once the pipeline has
  run, logs its counters and moves the values the pipeline computed
  (kept, left out, scene tables) into the dataset's metadata."""

  _beam_build = False

  def _download_and_prepare(self, dl_manager, download_config):
    self._beam_build = beam_requested(download_config)
    return super()._download_and_prepare(dl_manager, download_config)

  def _beam_metadata_folder(self) -> str:
    """A folder in the build folder (TFDS's `incomplete.*` folder while it
    builds) that the Beam workers write to."""
    from data_prep.datasets import raw_beam  # pylint: disable=g-import-not-at-top
    return os.fspath(epath.Path(self.data_dir) / raw_beam.METADATA_FOLDER)

  def _example_writer(self):
    """Shards may go to a bucket when Beam workers write them."""
    return tfds_spill.BucketExampleWriter(file_format=self.info.file_format)

  def _process_pipeline_result(self, pipeline_result):
    from data_prep.datasets import raw_beam  # pylint: disable=g-import-not-at-top
    raw_beam.log_counters(pipeline_result, self.info.full_name)
    raw_beam.apply_values(self.info.metadata,
                          raw_beam.read_values(self._beam_metadata_folder()))


def sample_raw_scenes(owner: Any) -> list[RawScene]:
  """The embedded sample's DNGs, written to a temporary folder removed with
  `owner` (a builder)."""
  folder = tempfile.mkdtemp(prefix='expcorr_sample_raws_')
  weakref.finalize(owner, shutil.rmtree, folder, ignore_errors=True)
  paths = [pathlib.Path(p) for p in sample_scenes.write_sample_raws(folder)]
  return [RawScene(path.stem, path, 'sample') for path in paths]


def listed_raw_scenes(owner: Any, dataset: str, source: str,
                      dl_manager: tfds.download.DownloadManager,
                      validation_fraction: float
                      ) -> tuple[list[RawScene],
                                 Callable[[Sequence[str]], dict[str, str]]]:
  """The RAW scenes a build reads, unprobed, and the rule that splits them.

  Args:
    owner: the builder (the sample's temporary DNGs live as long as it).
    dataset: e.g. 'multi_exposure/raw', for messages.
    source: 'sample' (the embedded sample, split by photo) or 'raw' (the RAW
      files below `manual_dir`, scene-disjoint deterministic splits).
    dl_manager: its manual_dir holds the RAW files ('raw' only: TFDS fails
      when a missing manual_dir is read, which the sample does not need).
    validation_fraction: share of scenes for validation ('raw' only).

  Returns:
    (scenes in listing order, a picklable function from the readable
    scenes' names to scene -> split).
  """
  if source == 'sample':
    return sample_raw_scenes(owner), sample_splits
  try:
    paths = render_raw.find_raw_files([os.fspath(dl_manager.manual_dir)])
  except render_raw.RenderInputError as e:
    raise ValueError(f'{dataset}: {e}') from e
  return ([RawScene(path.stem, path, path.name) for path in paths],
          functools.partial(scene_split.assign_splits,
                            validation_fraction=validation_fraction))


def usable_raw_scenes(owner: Any, dataset: str, source: str,
                      dl_manager: tfds.download.DownloadManager,
                      validation_fraction: float
                      ) -> tuple[list[RawScene], dict[str, str], list[dict]]:
  """The RAW scenes a local build reads, as the RAW-based builders share
  them (arguments as for `listed_raw_scenes`).

  Returns:
    (usable scenes sorted by name, scene -> split, the unreadable RAWs as
    omission records for the dataset's metadata: they are left out before
    scenes are split).
  """
  scenes, assign = listed_raw_scenes(owner, dataset, source, dl_manager,
                                     validation_fraction)
  unreadable: list[tuple[RawScene, str]] = []
  scenes = sorted(usable_raws(scenes, unreadable), key=lambda s: s.scene)
  split_of = assign([s.scene for s in scenes])
  left_out = [omission_record(scene, reason) for scene, reason in unreadable]
  return scenes, split_of, left_out
