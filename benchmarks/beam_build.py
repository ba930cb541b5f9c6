r"""A RAW build locally and on Beam's DirectRunner: scenes/s against the limit.

  python benchmarks/beam_build.py [--scenes=200] [--raw=fixture|synthetic] \
      [--synthetic_size=2000x3000] [--modes=local,beam1,beam2] \
      [--dataset=multi_exposure/raw]

Makes a RAW folder of --scenes files: copies of the golden Kodak DC50 RAW
(768x512, ../shared/fixtures/raw) or synthetic DNGs of --synthetic_size
(`data_prep.synthetic_raw`, from scikit-image's photos), and builds
--dataset from it once per mode, each into a fresh data_dir
(`data_prep.build.ensure_prepared`):
  local: the local build (this process);
  beamN: `--beam_pipeline_options=direct_num_workers=N,
    direct_running_mode=multi_processing`, N worker processes.
The limit is the pure work of one scene in this process: the probe, one
decode and the renders (`raw_scenes.probe_raw`, `render_raw_scene`),
and cutting the frames into tiles, timed over the first few scenes; N
workers cannot beat N / limit scenes/s. Each mode's figure is scenes over
the whole build's wall time (start-up, probing, writing and the metadata
included), and its share of the limit for its worker count (local: 1).
The last column is the build time per 1,000 RAWs per worker at that rate.

The machine must be otherwise idle.
"""

import os
import pathlib
import shutil
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from data_prep import build
from data_prep import tiled_frames
from data_prep.datasets import multi_exposure
from data_prep.datasets import raw_scenes

_SCENES = flags.DEFINE_integer('scenes', 200, 'RAW files in the folder.',
                               lower_bound=2)
_RAW = flags.DEFINE_enum('raw', 'fixture', ['fixture', 'synthetic'],
                         'Copies of the Kodak fixture, or synthetic DNGs.')
_SIZE = flags.DEFINE_string('synthetic_size', '2000x3000',
                            'HxW of synthetic DNGs.')
_MODES = flags.DEFINE_list('modes', ['local', 'beam1', 'beam2'],
                           'local and/or beamN (N DirectRunner workers).')
_DATASET = flags.DEFINE_string('dataset', 'multi_exposure/raw',
                               'A RAW-rendering dataset.')
_LIMIT_SCENES = 5  # Scenes timed for the limit.

FIXTURE = (pathlib.Path(__file__).resolve().parents[2] / 'shared' /
           'fixtures' / 'raw' / 'kodak_dc50.kdc')


def make_raws(folder: pathlib.Path, count: int, kind: str,
              size: str) -> None:
  """`count` RAW files in `folder` (see the module docstring)."""
  folder.mkdir(parents=True)
  if kind == 'fixture':
    data = FIXTURE.read_bytes()
    for index in range(count):
      (folder / f'scene_{index:05d}.kdc').write_bytes(data)
    return
  from data_prep import synthetic_raw  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  height, width = (int(v) for v in size.split('x'))
  photos = [skimage.data.astronaut(), skimage.data.chelsea(),
            skimage.data.coffee(), skimage.data.rocket()]
  encoded = []
  for photo in photos:
    big = np.asarray(Image.fromarray(photo).resize((width, height),
                                                   Image.BICUBIC))
    encoded.append(synthetic_raw.photo_to_dng_bytes(big))
  for index in range(count):
    (folder / f'scene_{index:05d}.dng').write_bytes(
        encoded[index % len(encoded)])


def limit_seconds(folder: pathlib.Path) -> float:
  """Seconds of pure work per scene (probe, decode, renders, tiles)."""
  paths = sorted(folder.iterdir())[:_LIMIT_SCENES]
  start = time.perf_counter()
  for path in paths:
    scene = raw_scenes.RawScene(path.stem, path, path.name)
    assert raw_scenes.probe_raw(path) is None
    fields, frames = multi_exposure.render_raw_scene(
        scene, evs=(-1.5, -1.0, 0.0, 1.0, 1.5), bits=8, tone_curve='none',
        half_size=False)
    del fields
    for _ in tiled_frames.frame_tiles(frames):
      pass
  return (time.perf_counter() - start) / len(paths)


def main(argv):
  del argv
  root = pathlib.Path(tempfile.mkdtemp(prefix='beam_build_bench_'))
  try:
    raws = root / 'raws'
    make_raws(raws, _SCENES.value, _RAW.value, _SIZE.value)
    limit = limit_seconds(raws)
    rows = []
    for mode in _MODES.value:
      workers = 1 if mode == 'local' else int(mode.removeprefix('beam'))
      options = None if mode == 'local' else (
          f'direct_num_workers={workers},direct_running_mode=multi_processing')
      start = time.perf_counter()
      build.ensure_prepared(_DATASET.value, root / mode, raws,
                            beam_pipeline_options=options)
      seconds = time.perf_counter() - start
      rate = _SCENES.value / seconds
      rows.append((mode, workers, seconds, rate,
                   rate / (workers / limit), 1000 / (rate / workers)))
      shutil.rmtree(root / mode, ignore_errors=True)
    print(f'\n{_DATASET.value}: {_SCENES.value} RAWs ({_RAW.value}'
          + (f' {_SIZE.value}' if _RAW.value == 'synthetic' else
             ' 768x512 Kodak DC50') + f'), {os.cpu_count()} CPUs')
    print(f'limit: {limit * 1000:.0f} ms per scene in one process '
          f'({1 / limit:.2f} scenes/s per worker)')
    print('| mode | workers | build s | scenes/s | of limit | '
          's per 1,000 RAWs per worker |')
    print('|---|---:|---:|---:|---:|---:|')
    for mode, workers, seconds, rate, share, per_thousand in rows:
      print(f'| {mode} | {workers} | {seconds:.1f} | {rate:.2f} | '
            f'{share:.2f} | {per_thousand:.0f} |')
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
  app.run(main)
