r"""The UEC training loader on full-size frames: what a sample costs the host.

  python benchmarks/input_pipeline.py [--scenes=12] [--size=2000x3000] \
      [--formats=jpeg,png16] [--layouts=files,tiles] [--workers=0,1,2] \
      [--batches=4] [--min_pass_seconds=10] [--repeat=100] [--work_dir=DIR]

Makes a full-size exposure-sequence set (--scenes x 5 EVs, frames of
--size, from scikit-image's photos upscaled with per-scene noise; JPEG q95
and/or 16-bit PNG), builds it with `multi_exposure/rendered`, and reports
for the UEC loader (batch 8, 448x448 crops, as configs/uec.py trains), for
two layouts in the same run:
  files: whole frames decoded from the rendered files, then cropped; the
    two scenes of a sample read whole (the cost of multi_exposure 1.x,
    less its record decoding);
  tiles: the tiled dataset (2.0, `data_prep.tiled_frames`), reading only
    the tiles a crop touches;
each scene shown to the loader --repeat times (100), so that grain's index
shuffle costs what it does on a dataset of a thousand scenes (see
`RepeatedScenes`); the figures:
  - samples/s at each --workers count (grain worker processes; 0 = in this
    process), median of 3 timed passes of at least --batches batches and
    --min_pass_seconds each, after start-up and as many batches as the
    workers may have buffered, and the per-core rate (workers, or 1 for 0
    workers);
  - bytes read and pixels decoded per sample, counted in-process on what
    the sampler asks for (files: the files' bytes; tiles: the tiles' bytes
    as array_record hands them out, after its zstd decompression), against
    the pixels a sample keeps (4 crops of 448x448);
  - the whole-frame decode limit: samples/s per core if a sample cost four
    whole-frame decodes (4 x the mean time of one);
  - the peak resident memory (VmHWM) of each grain worker process (the
    largest descendant processes);
  - the files' and the dataset's size on disk.

The machine must be otherwise idle.
"""

import math
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

_SCENES = flags.DEFINE_integer('scenes', 12, 'Scenes in the JPEG set.')
# Fewer 16-bit scenes keep the set's making and build short (see
# RepeatedScenes for why the count of distinct scenes does not matter).
_PNG16_SCENES = flags.DEFINE_integer('png16_scenes', 6,
                                     'Scenes in the 16-bit PNG set.')
_SIZE = flags.DEFINE_string('size', '2000x3000', 'Frame HxW.')
_FORMATS = flags.DEFINE_list('formats', ['jpeg', 'png16'],
                             'Frame encodings: jpeg (q95), png16.')
_WORKERS = flags.DEFINE_list('workers', ['0', '1', '2'],
                             'grain worker counts to time.')
_BATCHES = flags.DEFINE_integer('batches', 4,
                               'Batches per timed pass, at least.')
_MIN_PASS_SECONDS = flags.DEFINE_float(
    'min_pass_seconds', 10.0, 'Each timed pass lasts at least this long.')
_REPEAT = flags.DEFINE_integer(
    'repeat', 100, 'Each scene appears this many times to the loader (see '
    'RepeatedScenes).')
_WORK_DIR = flags.DEFINE_string(
    'work_dir', None, 'Make and build the sets here and keep them, reusing '
    'what an earlier run left (default: a temporary folder).')
_LAYOUTS = flags.DEFINE_list(
    'layouts', ['files', 'tiles'],
    'files: whole frames decoded from the rendered files (the 1.x cost); '
    'tiles: the tiled dataset (2.0).')
_PASSES = 3
_BATCH = 8
_CROP = 448
_TAGS = ('N1.5', 'N1', '0', 'P1', 'P1.5')
_EVS = (-1.5, -1.0, 0.0, 1.0, 1.5)
_NAME = 'multi_exposure/rendered'


def _scene_photo(index: int, height: int, width: int) -> np.ndarray:
  """A float [0, 1] photo of the given size: a bundled photo, upscaled,
  with mild noise so that the encoders see camera-like texture."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top
  names = ('astronaut', 'coffee', 'chelsea', 'rocket', 'immunohistochemistry',
           'hubble_deep_field')
  photo = np.asarray(getattr(skimage.data, names[index % len(names)])())
  photo = np.asarray(Image.fromarray(photo).resize((width, height),
                                                   Image.BICUBIC))
  rng = np.random.default_rng(index)
  photo = photo / 255.0 + rng.normal(0, 0.01, photo.shape)
  return np.clip(photo, 0, 1)


def make_set(root: pathlib.Path, image_format: str, scenes: int,
             height: int, width: int) -> None:
  """`<scene>_<tag>.{jpg,png}` frames, 5 EVs per scene."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from data_prep import image_codec  # pylint: disable=g-import-not-at-top
  root.mkdir(parents=True)
  for scene in range(scenes):
    linear = _scene_photo(scene, height, width) ** 2.2
    for tag, ev in zip(_TAGS, _EVS):
      frame = np.clip(linear * 2.0**ev, 0, 1) ** (1 / 2.2)
      if image_format == 'jpeg':
        Image.fromarray(np.round(frame * 255).astype(np.uint8)).save(
            root / f'scene{scene:03d}_{tag}.jpg', quality=95)
      else:
        (root / f'scene{scene:03d}_{tag}.png').write_bytes(
            image_codec.encode_png(np.round(frame * 65535).astype(np.uint16)))


class WholeFrameSource:
  """The 1.x layout's cost, emulated: scene records whose frames are the
  rendered files' bytes (every frame of the scene read, as 1.x read a whole
  scene record, without its record decoding), decoded whole by the sampler
  and then cropped.
  """

  def __init__(self, manual_dir: pathlib.Path, tiled_source):
    self._scenes = []
    for index in range(len(tiled_source)):
      record = tiled_source[index]
      scene = record['scene'].decode()
      paths = sorted(manual_dir.glob(f'{scene}_*'))
      by_tag = {path.stem.rsplit('_', 1)[1]: path for path in paths}
      self._scenes.append((record, [by_tag[t] for t in _TAGS]))
    self.bytes_read = 0

  def __len__(self):
    return len(self._scenes)

  def __getitem__(self, index):
    record, paths = self._scenes[index]
    return {**record, 'frames': tuple(_LazyFile(self, p) for p in paths)}

  def __repr__(self):
    return 'WholeFrameSource'


class _LazyFile(bytes):
  """A frame file's bytes, counted as read."""

  def __new__(cls, owner, path):
    data = path.read_bytes()
    owner.bytes_read += len(data)
    return super().__new__(cls, data)


class RepeatedScenes:
  """A split's scenes, each appearing `times` times.

  grain's index shuffle costs more per index the fewer records a source
  has (measured with grain 0.2.18: 6.4 ms per index at 3 records, 244 us at
  100, 26 us at 1,000, 4.6 us at 100,000), so on a set of a dozen scenes it
  alone costs a core milliseconds per sample, far more than on a real
  dataset. Repeated scenes give the loader a dataset-sized record count
  without making thousands of full-size frames.
  """

  def __init__(self, source, times: int):
    self._source = source
    self._times = times

  def __len__(self):
    return len(self._source) * self._times

  def __getitem__(self, index):
    return self._source[index % len(self._source)]

  def __repr__(self):
    return f'RepeatedScenes({self._source!r}, {self._times})'


class CountingTiles:
  """Tile records that count the bytes handed out."""

  def __init__(self, tiles):
    self._tiles = tiles
    self.bytes_read = 0

  def __len__(self):
    return len(self._tiles)

  def read(self, indices, **kwargs):
    for tile in self._tiles.read(indices, **kwargs):
      self.bytes_read += len(tile)
      yield tile

  def __repr__(self):
    return 'CountingTiles'


def _loader(source, workers: int):
  from expcorr_jax.tasks import uec  # pylint: disable=g-import-not-at-top
  return uec.train_loader(source, crop_size=_CROP, flip=True,
                          global_batch_size=_BATCH, seed=0,
                          worker_count=workers, process_index=0,
                          process_count=1)


def per_sample_costs(source, layout: str, bytes_per_value: int
                     ) -> tuple[float, float]:
  """(bytes read, pixels decoded) per sample, in this process: whole files
  and whole frames for 'files'; tile bytes (after array_record's
  decompression) and the tiles' pixels for 'tiles'."""
  from data_prep import tiled_frames  # pylint: disable=g-import-not-at-top
  from expcorr_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  if layout == 'files':
    files = source._source  # pylint: disable=protected-access
    decoded = []
    decode = input_pipeline.decode

    def counting_decode(data):
      image = decode(data)
      decoded.append(image.shape[0] * image.shape[1])
      return image
    input_pipeline.decode = counting_decode
    files.bytes_read = 0
    try:
      next(iter(_loader(source, 0)))
    finally:
      input_pipeline.decode = decode
    return files.bytes_read / _BATCH, sum(decoded) / _BATCH
  tiled = source._source  # pylint: disable=protected-access
  counting = CountingTiles(tiled._tiles)  # pylint: disable=protected-access
  counted = tiled_frames.TiledSceneSource(
      counting, tiled._scenes, tiled._tile)  # pylint: disable=protected-access
  next(iter(_loader(RepeatedScenes(counted, _REPEAT.value), 0)))
  read = counting.bytes_read / _BATCH
  return read, read / (3 * bytes_per_value)


def decode_seconds(source) -> float:
  """Mean wall time of one whole-frame decode over every frame of the split
  (frames differ in content, so in decode time)."""
  from expcorr_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  source = source._source  # pylint: disable=protected-access
  times = []
  for index in range(len(source)):
    for frame in source[index]['frames']:
      start = time.perf_counter()
      input_pipeline.decode(frame)
      times.append(time.perf_counter() - start)
  return statistics.mean(times)


def _children_peak_mib() -> list[float]:
  """VmHWM of every descendant process of this one, in MiB."""
  def children(pid):
    found = []
    for task in pathlib.Path(f'/proc/{pid}/task').glob('*'):
      text = (task / 'children').read_text().split()
      found += [int(child) for child in text]
    return found
  peaks, todo = [], children(os.getpid())
  while todo:
    pid = todo.pop()
    try:
      status = pathlib.Path(f'/proc/{pid}/status').read_text()
      todo += children(pid)
    except OSError:
      continue
    for line in status.splitlines():
      if line.startswith('VmHWM:'):
        peaks.append(int(line.split()[1]) / 1024)
  return peaks


def samples_per_second(source, workers: int) -> tuple[float, list[float]]:
  """(median samples/s over the passes, worker peaks in MiB).

  Steady state: after start-up, as many batches as the workers can have
  buffered are drawn before timing, and each pass lasts at least
  --min_pass_seconds (or --batches batches, whichever is more), so
  buffered batches do not inflate the rate.
  """
  iterator = iter(_loader(source, workers))
  next(iterator)  # Start-up out of the timing.
  start = time.perf_counter()
  for _ in range(2 * workers + 1):
    next(iterator)
  per_batch = (time.perf_counter() - start) / (2 * workers + 1)
  batches = max(_BATCHES.value,
                math.ceil(_MIN_PASS_SECONDS.value / max(per_batch, 1e-6)))
  rates = []
  for _ in range(_PASSES):
    start = time.perf_counter()
    for _ in range(batches):
      next(iterator)
    rates.append(_BATCH * batches / (time.perf_counter() - start))
  peaks = _children_peak_mib()
  del iterator
  return statistics.median(rates), peaks


def _disk_mb(folder: pathlib.Path) -> float:
  return sum(f.stat().st_size for f in folder.rglob('*') if f.is_file()) / 1e6


def main(argv):
  del argv
  from data_prep import build  # pylint: disable=g-import-not-at-top
  height, width = (int(v) for v in _SIZE.value.lower().split('x'))
  kept = 4 * _CROP * _CROP
  print(f'# 5 EVs per scene at {height}x{width}, batch '
        f'{_BATCH}, {_CROP}x{_CROP} crops, {os.cpu_count()} CPUs')
  print('| frames | layout | workers | samples/s | per core | MB read / '
        'sample | Mpx decoded / sample | decoded / kept | whole-frame '
        'decode limit / core | worker peak MiB |')
  print('|---|---|---:|---:|---:|---:|---:|---:|---:|---|')
  with tempfile.TemporaryDirectory() as temporary:
    root = pathlib.Path(_WORK_DIR.value or temporary)
    for image_format in _FORMATS.value:
      scenes = _SCENES.value if image_format == 'jpeg' else _PNG16_SCENES.value
      name = f'{image_format}_{scenes}x{height}x{width}'
      manual_dir = root / name
      data_dir = root / f'tfds_{name}'
      start = time.perf_counter()
      if not manual_dir.exists():  # Made whole, then named: never half.
        partial = root / f'{name}.partial'
        shutil.rmtree(partial, ignore_errors=True)
        make_set(partial, image_format, scenes, height, width)
        partial.rename(manual_dir)
      made = time.perf_counter() - start
      start = time.perf_counter()
      build.ensure_prepared(_NAME, data_dir, manual_dir)
      print(f'# {image_format}: {scenes} scenes, made in {made:.0f} s, '
            f'built in {time.perf_counter() - start:.0f} s; files '
            f'{_disk_mb(manual_dir):.0f} MB, dataset {_disk_mb(data_dir):.0f} '
            'MB on disk', flush=True)
      tiled = build.data_source(_NAME, 'train', data_dir)
      sources = {'files': WholeFrameSource(manual_dir, tiled),
                 'tiles': tiled}
      for layout in _LAYOUTS.value:
        source = RepeatedScenes(sources[layout], _REPEAT.value)
        bytes_read, pixels = per_sample_costs(
            source, layout, 1 if image_format == 'jpeg' else 2)
        limit = 1 / (4 * decode_seconds(source))
        for workers in (int(w) for w in _WORKERS.value):
          rate, peaks = samples_per_second(source, workers)
          # The largest descendants are the grain workers (others, as
          # multiprocessing's resource tracker, stay small).
          peak_text = ', '.join(
              f'{p:.0f}' for p in sorted(peaks, reverse=True)[:workers]) or '-'
          print(f'| {image_format} | {layout} | {workers} | {rate:.2f} | '
                f'{rate / max(workers, 1):.2f} | {bytes_read / 1e6:.1f} | '
                f'{pixels / 1e6:.2f} | {pixels / kept:.2f}x | {limit:.2f} | '
                f'{peak_text} |', flush=True)


if __name__ == '__main__':
  app.run(main)
