r"""Trains and evaluates an exposure-correction model from a config file.

  python -m expcorr_jax.main --config=configs/uec.py --workdir=/tmp/uec

Rerunning the same command resumes from the latest checkpoint in the workdir.
The workdir and `--config.data.data_dir` may be local or in a bucket
(`gs://BUCKET/run`); both are checked writable before anything is built.

Multi-process jobs (TPU pod slices, several GPU nodes): on Cloud TPU, Slurm,
Open MPI or Kubernetes the same command runs on every host or task and JAX's
cluster detection connects them; elsewhere give each process
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
(process 0's host and a free port; see README, "Scaling out"). A process
lost mid-run stops the others within --heartbeat_timeout_s.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from data_prep import storage
from expcorr_jax import distributed
from expcorr_jax import quiet_logs
from expcorr_jax import train
from expcorr_jax import workdir_lease

_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Where checkpoints and summaries go.')
_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Training config file, configs/<method>.py[:args].',
    lock_config=True)
distributed.define_flags()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  quiet_logs.install()
  distributed.initialize_from_flags()
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  # A location unusable at start, or a workdir another job trains in: one
  # line, exit status 1.
  except (storage.StorageError, workdir_lease.WorkdirInUseError,
          workdir_lease.WorkdirLeaseLostError) as e:
    raise SystemExit(str(e)) from e


if __name__ == '__main__':
  app.run(main)
