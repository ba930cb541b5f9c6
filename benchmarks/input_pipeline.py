r"""The UEC training loader on full-size frames: what a sample costs the host.

  python benchmarks/input_pipeline.py [--scenes=12] [--size=2000x3000] \
      [--formats=jpeg,png16] [--workers=0,1,2] [--batches=4]

Makes a full-size exposure-sequence set (--scenes x 5 EVs, frames of
--size, from scikit-image's photos upscaled with per-scene noise; JPEG q95
and/or 16-bit PNG), builds it with `multi_exposure/rendered`, and reports
for the UEC loader (batch 8, 448x448 crops, as configs/uec.py trains):

  - samples/s at each --workers count (grain worker processes; 0 = in this
    process), median of 3 timed passes of --batches batches after a warm-up
    batch, and the per-core rate (workers, or 1 for 0 workers);
  - bytes read and pixels decoded per sample (counted in-process on the
    records and frames the sampler asks for), against the pixels a sample
    keeps (4 crops of 448x448);
  - the full-decode limit: samples/s per core if a sample cost only its
    frame decodes (4 x the mean time of one full decode);
  - the peak resident memory (VmHWM) of each grain worker process (the
    largest descendant processes).

This is the baseline for issue 23's "decode only what a crop needs"; the
machine must be otherwise idle.
"""

import os
import pathlib
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
# TFDS's writer spills a split of over 1 GiB to disk through tf.io.gfile,
# which needs TensorFlow (not a dependency): 12 full-size 16-bit scenes
# (~1.5 GB) fail to build, so the PNG set has fewer scenes. A sample's cost
# does not depend on the number of scenes.
_PNG16_SCENES = flags.DEFINE_integer('png16_scenes', 6,
                                     'Scenes in the 16-bit PNG set.')
_SIZE = flags.DEFINE_string('size', '2000x3000', 'Frame HxW.')
_FORMATS = flags.DEFINE_list('formats', ['jpeg', 'png16'],
                             'Frame encodings: jpeg (q95), png16.')
_WORKERS = flags.DEFINE_list('workers', ['0', '1', '2'],
                             'grain worker counts to time.')
_BATCHES = flags.DEFINE_integer('batches', 4, 'Batches per timed pass.')
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


class CountingSource:
  """A data source that counts the frame bytes of the records it returns."""

  def __init__(self, source):
    self._source = source
    self.bytes_read = 0

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    record = self._source[index]
    self.bytes_read += sum(len(frame) for frame in record['frames'])
    return record

  def __repr__(self):
    return 'CountingSource'


def _loader(source, workers: int):
  from expcorr_jax.tasks import uec  # pylint: disable=g-import-not-at-top
  return uec.train_loader(source, crop_size=_CROP, flip=True,
                          global_batch_size=_BATCH, seed=0,
                          worker_count=workers, process_index=0,
                          process_count=1)


def per_sample_costs(source) -> tuple[float, float]:
  """(bytes read, pixels decoded) per sample, in this process."""
  from expcorr_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  counting = CountingSource(source)
  decoded = []
  decode = input_pipeline.decode

  def counting_decode(data):
    image = decode(data)
    decoded.append(image.shape[0] * image.shape[1])
    return image
  input_pipeline.decode = counting_decode
  try:
    next(iter(_loader(counting, 0)))
  finally:
    input_pipeline.decode = decode
  return counting.bytes_read / _BATCH, sum(decoded) / _BATCH


def decode_seconds(source) -> float:
  """Mean wall time of one full frame decode over every frame of the split
  (frames differ in content, so in decode time)."""
  from expcorr_jax import input_pipeline  # pylint: disable=g-import-not-at-top
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
  """(median samples/s over the passes, worker peaks in MiB)."""
  iterator = iter(_loader(source, workers))
  next(iterator)  # Start-up and warm-up out of the timing.
  rates = []
  for _ in range(_PASSES):
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
      next(iterator)
    rates.append(_BATCH * _BATCHES.value / (time.perf_counter() - start))
  peaks = _children_peak_mib()
  del iterator
  return statistics.median(rates), peaks


def main(argv):
  del argv
  from data_prep import build  # pylint: disable=g-import-not-at-top
  height, width = (int(v) for v in _SIZE.value.lower().split('x'))
  kept = 4 * _CROP * _CROP
  print(f'# 5 EVs per scene at {height}x{width}, batch '
        f'{_BATCH}, {_CROP}x{_CROP} crops, {os.cpu_count()} CPUs')
  print('| frames | workers | samples/s | per core | MB read / sample | '
        'Mpx decoded / sample | decoded / kept | full-decode limit / core | '
        'worker peak MiB |')
  print('|---|---:|---:|---:|---:|---:|---:|---:|---|')
  with tempfile.TemporaryDirectory() as root:
    for image_format in _FORMATS.value:
      manual_dir = pathlib.Path(root) / image_format
      data_dir = pathlib.Path(root) / f'tfds_{image_format}'
      start = time.perf_counter()
      scenes = _SCENES.value if image_format == 'jpeg' else _PNG16_SCENES.value
      make_set(manual_dir, image_format, scenes, height, width)
      made = time.perf_counter() - start
      start = time.perf_counter()
      build.ensure_prepared(_NAME, data_dir, manual_dir)
      print(f'# {image_format}: {scenes} scenes, made in {made:.0f} s, '
            f'built in {time.perf_counter() - start:.0f} s')
      source = build.data_source(_NAME, 'train', data_dir)
      bytes_read, pixels = per_sample_costs(source)
      limit = 1 / (4 * decode_seconds(source))
      for workers in (int(w) for w in _WORKERS.value):
        rate, peaks = samples_per_second(source, workers)
        # The largest descendants are the grain workers (others, as
        # multiprocessing's resource tracker, stay small).
        peak_text = ', '.join(
            f'{p:.0f}' for p in sorted(peaks, reverse=True)[:workers]) or '-'
        print(f'| {image_format} | {workers} | {rate:.2f} | '
              f'{rate / max(workers, 1):.2f} | {bytes_read / 1e6:.1f} | '
              f'{pixels / 1e6:.1f} | {pixels / kept:.0f}x | {limit:.2f} | '
              f'{peak_text} |', flush=True)


if __name__ == '__main__':
  app.run(main)
