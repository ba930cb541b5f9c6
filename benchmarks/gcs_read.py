r"""Reading training data from a bucket against local disk, in one run.

  python benchmarks/gcs_read.py [--batches=20] [--repeats=3]

Starts a GCS-compatible server (fake-gcs-server, as the tests do) on
127.0.0.1, builds the embedded sample into a bucket on it and into a local
folder, and times, for each: random-access record reads through
`tfds.data_source` (array_record; the bucket's shards are read in place by
array_record's GCS client) and the UEC training loader (batch 8, 128x128
crops, no worker processes: decoding included). The figures are medians
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


def _record_reads_per_second(data_dir: str) -> float:
  from data_prep import build  # pylint: disable=g-import-not-at-top
  source = build.data_source(_NAME, 'train', data_dir)
  order = list(range(len(source))) * 4
  start = time.perf_counter()
  for index in order:
    source[index]  # pylint: disable=pointless-statement
  return len(order) / (time.perf_counter() - start)


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
        rows[place] = (
            statistics.median(_record_reads_per_second(data_dir)
                              for _ in range(_REPEATS.value)),
            statistics.median(_loader_samples_per_second(data_dir)
                              for _ in range(_REPEATS.value)))
    finally:
      server.stop()
  print('| data_dir | records/s (random reads) | UEC loader samples/s |')
  print('|---|---:|---:|')
  for place, (records, samples) in rows.items():
    print(f'| {place} | {records:.1f} | {samples:.2f} |')
  local, remote = rows['local'], rows['bucket']
  print(f'| bucket / local | {remote[0] / local[0]:.2f} | '
        f'{remote[1] / local[1]:.2f} |')


if __name__ == '__main__':
  app.run(main)
