r"""Reading training data from a bucket against local disk, in one run.

  python benchmarks/gcs_read.py [--batches=20] [--repeats=3]

Starts a GCS-compatible server (fake-gcs-server, as the tests do) on
127.0.0.1, builds the embedded sample into a bucket on it and into a local
folder, and times, for each: single tile records read in a random order and
whole frames assembled from their tiles (`data_prep/tiled_frames.py`; the
bucket's array_record shards are read in place by array_record's GCS
client, a frame's tiles in parallel), and the UEC training loader (batch 8,
128x128 crops, no worker processes). The figures are medians
over --repeats passes; the ratio is bucket / local. A local emulator has no
network latency: against a real bucket the record reads cost more, which
grain's worker processes and prefetching hide.
"""

import os
import pathlib
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / 'tests'))  # gcs_server.py, shared with tests.

import gcs_server  # pylint: disable=g-import-not-at-top,wrong-import-position

_BATCHES = flags.DEFINE_integer('batches', 20, 'Loader batches per pass.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Passes per measurement.')
_NAME = 'multi_exposure/sample'


def _tile_reads_per_second(data_dir: str) -> float:
  """Single tile records read in a random order (what a crop's reads are
  made of)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from data_prep import build  # pylint: disable=g-import-not-at-top
  tiles = build.data_source(_NAME, 'train', data_dir)._tiles  # pylint: disable=protected-access
  order = np.random.default_rng(0).permutation(len(tiles))[:400]
  start = time.perf_counter()
  for index in order:
    list(tiles.read([int(index)]))  # Read as the list is made.
  return len(order) / (time.perf_counter() - start)


def _frames_per_second(data_dir: str) -> float:
  """Whole frames assembled from their tiles (what evaluation reads)."""
  from data_prep import build  # pylint: disable=g-import-not-at-top
  source = build.data_source(_NAME, 'train', data_dir)
  frames = [frame for index in range(len(source))
            for frame in source[index]['frames']]
  start = time.perf_counter()
  for frame in frames:
    frame.decode()
  return len(frames) / (time.perf_counter() - start)


def _loader_samples_per_second(data_dir: str) -> float:
  from data_prep import build  # pylint: disable=g-import-not-at-top
  from expcorr_jax import config_args  # pylint: disable=g-import-not-at-top
  from expcorr_jax import tasks  # pylint: disable=g-import-not-at-top
  config = config_args.load_config(REPO_ROOT / 'configs' / 'uec.py',
                                   'runlocal')
  loader = tasks.get_task('uec').make_train_loader(
      config, build.data_source(_NAME, 'train', data_dir),
      global_batch_size=8, seed=0, worker_count=0, process_index=0,
      process_count=1)
  iterator = iter(loader)
  next(iterator)  # Start-up out of the timing.
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(iterator)
  return 8 * _BATCHES.value / (time.perf_counter() - start)


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as root:
    server = gcs_server.GcsServer(pathlib.Path(root) / 'server')
    server.start()
    os.environ.update(server.env)
    try:
      from data_prep import build  # pylint: disable=g-import-not-at-top
      bucket = server.create_bucket('benchmark')
      places = {'local': f'{root}/tfds', 'bucket': f'{bucket}/tfds'}
      for data_dir in places.values():
        build.ensure_prepared(_NAME, data_dir)
      rows = {}
      for place, data_dir in places.items():
        rows[place] = tuple(
            statistics.median(measure(data_dir)
                              for _ in range(_REPEATS.value))
            for measure in (_tile_reads_per_second, _frames_per_second,
                            _loader_samples_per_second))
    finally:
      server.stop()
  print('| data_dir | tiles/s (random reads) | whole frames/s | UEC loader '
        'samples/s |')
  print('|---|---:|---:|---:|')
  for place, figures in rows.items():
    print(f'| {place} | ' + ' | '.join(f'{f:.2f}' for f in figures) + ' |')
  local, remote = rows['local'], rows['bucket']
  print('| bucket / local | ' + ' | '.join(
      f'{r / l:.2f}' for r, l in zip(remote, local)) + ' |')


if __name__ == '__main__':
  app.run(main)
