"""The multi-process runtime: start-up, barriers, preemption, gathering.

A TPU pod slice larger than one host, or a GPU job over several nodes, is one
JAX program run as several processes, one per host (or per GPU). They must
call `jax.distributed.initialize` before anything else touches JAX, and then
run the same collective steps in the same order. `initialize` does that only
when the job really has more than one process:

- explicit flags (`--coordinator_address=HOST:PORT --num_processes=N
  --process_id=I`), passed through to `jax.distributed.initialize`;
- otherwise JAX's own cluster detection (Cloud TPU, Slurm, Open MPI,
  Kubernetes), but only when the detected job has more than one process: a
  plain run, or a Slurm allocation of one task, stays single-process.

On multi-process CPU runs the CPU collectives go through gloo (XLA has no
other CPU implementation across processes); on GPUs and TPUs that setting is
unused.

Preemption (`Preemption`): a SIGTERM may reach one process only, or each at a
different step. In a multi-process run the distributed runtime installs its
own SIGTERM notifier and agrees, through the coordinator, on one step at
which every process sees `reached_preemption_sync_point` return True; every
process then saves that step and exits. A single process keeps its own
SIGTERM handler (the runtime's is only there after `initialize`).
"""

import signal
import threading

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines --coordinator_address, --num_processes and --process_id.

  Called by the CLIs that start jobs (not at import, so importing this
  module defines no global flags).
  """
  flags.DEFINE_string(
      'coordinator_address', None,
      'Multi-process runs without a detected cluster: HOST:PORT of process 0.',
      flag_values=flag_values)
  flags.DEFINE_integer('num_processes', None,
                       'Multi-process runs: the number of processes.',
                       flag_values=flag_values)
  flags.DEFINE_integer('process_id', None,
                       'Multi-process runs: this process, 0..N-1.',
                       flag_values=flag_values)


def _detected_cluster() -> tuple[str, int] | None:
  """(name, process count) of the cluster JAX's detection would use, if any.

  Uses JAX's own cluster environments (the ones `jax.distributed.initialize()`
  without arguments tries), so the rule is the same as JAX's; their process
  count tells a one-task job from a real multi-process one.
  """
  try:
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
  except ImportError:  # A JAX without the module: no automatic detection.
    return None
  for env in clusters.ClusterEnv._cluster_types:  # pylint: disable=protected-access
    if env.opt_in_only_method:
      continue
    try:
      if env.is_env_present():
        return env.__name__, int(env.get_process_count())
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Cluster detection %s failed (%s); treating the job as '
                      'single-process.', env.__name__, e)
  return None


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts the distributed runtime for a multi-process job (see module).

  Args:
    coordinator_address: HOST:PORT of process 0's coordinator, or None.
    num_processes: the number of processes, or None.
    process_id: this process's index in [0, num_processes), or None.

  Returns:
    Whether the runtime was initialised (the job has several processes).

  Raises:
    ValueError: only some of the three flags are given, or they are out of
      range.
  """
  given = {'coordinator_address': coordinator_address,
           'num_processes': num_processes, 'process_id': process_id}
  if any(value is not None for value in given.values()):
    missing = sorted(name for name, value in given.items() if value is None)
    if missing:
      raise ValueError(
          f'Multi-process flags need all three of --coordinator_address, '
          f'--num_processes and --process_id; missing: '
          f'{", ".join("--" + m for m in missing)}.')
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f'--process_id={process_id} must be in [0, '
                       f'--num_processes={num_processes}).')
    if num_processes == 1:
      return False
    kwargs = given
  else:
    detected = _detected_cluster()
    if detected is None or detected[1] <= 1:
      return False
    logging.info('%s job of %d processes detected.', *detected)
    kwargs = {}
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
  logging.info('JAX distributed runtime: process %d of %d.',
               jax.process_index(), jax.process_count())
  return True


def initialize_from_flags(flag_values: flags.FlagValues = flags.FLAGS
                          ) -> bool:
  """`initialize` with the flags of `define_flags`, for a CLI's main."""
  try:
    return initialize(flag_values.coordinator_address,
                      flag_values.num_processes, flag_values.process_id)
  except ValueError as e:
    raise app.UsageError(str(e)) from e


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op alone)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def gather_from_processes(local: np.ndarray) -> np.ndarray:
  """(process_count, *local.shape): every process's array, on every process.

  Bit-exact for any dtype (float64 included, which JAX would otherwise
  round to float32): the bytes are gathered and viewed back. Every process
  must call it with an array of the same shape and dtype.
  """
  local = np.ascontiguousarray(local)
  if jax.process_count() == 1:
    return local[None]
  raw = np.frombuffer(local.tobytes(), np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(raw))
  return np.stack([np.frombuffer(row.tobytes(), local.dtype).reshape(
      local.shape) for row in gathered])


class Preemption:
  """Tells the training loop when to save and stop because of a SIGTERM.

  Use as a context manager and call `reached(step)` after every step, on
  every process, with the same steps: it is True at one agreed step on all
  processes at once (multi-process), or at the first step after the signal
  (single process, whose own SIGTERM handler is installed for the duration).
  """

  def __init__(self):
    self._multi_process = jax.process_count() > 1
    self._signalled = False
    self._previous = None

  def __enter__(self) -> 'Preemption':
    if (not self._multi_process and
        threading.current_thread() is threading.main_thread()):
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint, then exiting.')
    self._signalled = True

  def reached(self, step: int) -> bool:
    """Whether to save `step` and stop (the same answer on every process)."""
    if self._multi_process:
      if multihost_utils.reached_preemption_sync_point(step):
        logging.warning('Preemption agreed by all processes at step %d: '
                        'saving a checkpoint, then exiting.', step)
        return True
      return False
    return self._signalled

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
