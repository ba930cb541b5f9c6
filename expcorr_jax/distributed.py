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

Never a silent split-brain: when the environment itself says the job has
several processes (`SLURM_NTASKS`, `SLURM_NPROCS`, `OMPI_COMM_WORLD_SIZE`,
`PMI_SIZE` > 1, or several `TPU_WORKER_HOSTNAMES`) but JAX's detection
fails or finds no such job, or the runtime cannot start, the process exits
with one line naming what was detected and what failed
(`ClusterStartError`), instead of running as process 0 of 1 beside the
others in the same workdir.

A lost process (a host that dies, a task killed for memory): the runtime's
heartbeats bound how long the others wait. Every process sends them to the
coordination service; one silent for `--heartbeat_timeout_s` (60 s here,
JAX's own default is 100 s) is declared dead, and the runtime then stops
every other process, its log naming the dead task. Where a collective fails
before that (gloo on CPU sees the closed connection at once), the training
loop logs what happened, which process the runtime found dead and where the
last good checkpoint is (`exit_for_lost_process`), and exits 1 without the
shutdown barrier that would wait for the dead process. Start-up is bounded
the same way: processes that cannot reach the coordinator give up after
`--initialization_timeout_s`.

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

import os
import re
import signal
import sys
import threading

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np


# A lost process is declared dead after this long without heartbeats; the
# others then stop. JAX's own default is 100 s.
DEFAULT_HEARTBEAT_TIMEOUT_S = 60
DEFAULT_INITIALIZATION_TIMEOUT_S = 300  # JAX's own default.
# The heartbeat timeout the runtime was started with (for messages).
_heartbeat_timeout_s = DEFAULT_HEARTBEAT_TIMEOUT_S


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the multi-process flags (see `initialize` for their meaning).

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
  flags.DEFINE_integer(
      'heartbeat_timeout_s', DEFAULT_HEARTBEAT_TIMEOUT_S,
      'Multi-process runs: a process silent this long is declared lost and '
      'the others stop (exit non-zero) instead of waiting for it.',
      lower_bound=1, flag_values=flag_values)
  flags.DEFINE_integer(
      'initialization_timeout_s', DEFAULT_INITIALIZATION_TIMEOUT_S,
      'Multi-process runs: how long a process tries to reach the coordinator '
      'at start before it gives up.', lower_bound=1, flag_values=flag_values)



class ClusterStartError(RuntimeError):
  """The environment says the job has several processes, but the runtime
  cannot be started: running on as one process of one would have every host
  write the same workdir (a silent split-brain)."""


def _host_count(value: str) -> int:
  return len([host for host in value.split(',') if host.strip()])


# Environment variables that say a job has several processes, read on their
# own (not through JAX's detection, which may fail or change): name -> the
# process count its value gives.
_CLUSTER_SIGNALS = (
    ('SLURM_NTASKS', int), ('SLURM_NPROCS', int),
    ('OMPI_COMM_WORLD_SIZE', int), ('PMI_SIZE', int),
    ('TPU_WORKER_HOSTNAMES', _host_count),  # Set on every TPU pod worker.
)


def cluster_signals() -> dict[str, int]:
  """{variable: process count} of the variables saying count > 1."""
  found = {}
  for name, count_of in _CLUSTER_SIGNALS:
    try:
      count = count_of(os.environ[name])
    except (KeyError, ValueError):
      continue
    if count > 1:
      found[name] = count
  return found


def _describe(signals: dict[str, int]) -> str:
  return ', '.join(f'{name}={count}' for name, count in signals.items())


def _detected_cluster() -> tuple[str, int] | None:
  """(name, process count) of the cluster JAX's detection would use, if any.

  Uses JAX's own cluster environments (the ones `jax.distributed.initialize()`
  without arguments tries), so the rule is the same as JAX's; their process
  count tells a one-task job from a real multi-process one.

  Raises:
    Exception: a detection raised (e.g. a metadata-server hiccup).
  """
  try:
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
  except ImportError:  # A JAX without the module: no automatic detection.
    return None
  for env in clusters.ClusterEnv._cluster_types:  # pylint: disable=protected-access
    if env.opt_in_only_method:
      continue
    if env.is_env_present():
      return env.__name__, int(env.get_process_count())
  return None


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None, *,
               heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
               initialization_timeout_s: int = DEFAULT_INITIALIZATION_TIMEOUT_S
               ) -> bool:
  """Starts the distributed runtime for a multi-process job (see module).

  Args:
    coordinator_address: HOST:PORT of process 0's coordinator, or None.
    num_processes: the number of processes, or None.
    process_id: this process's index in [0, num_processes), or None.
    heartbeat_timeout_s: a process silent this long is declared lost.
    initialization_timeout_s: how long to try reaching the coordinator.

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
    described = f'--num_processes={num_processes}'
  else:
    signals = cluster_signals()
    refusal = (f'The environment says this job has several processes '
               f'({_describe(signals)}), but ')
    fix = ('. Refusing to run as a single process: every host would train '
           'and write the same workdir. Fix the cluster environment, or pass '
           '--coordinator_address, --num_processes and --process_id.')
    try:
      detected = _detected_cluster()
    except Exception as e:  # pylint: disable=broad-except
      if signals:
        raise ClusterStartError(refusal + f'JAX\'s cluster detection failed '
                                f'({type(e).__name__}: {e})' + fix) from e
      logging.warning('Cluster detection failed (%s); nothing in the '
                      'environment says the job has several processes, so '
                      'it runs as one.', e)
      detected = None
    if detected is None or detected[1] <= 1:
      if signals:
        raise ClusterStartError(
            refusal + ('JAX detected no cluster' if detected is None else
                       f'JAX detected a {detected[0]} job of 1 process')
            + fix)
      return False
    logging.info('%s job of %d processes detected.', *detected)
    kwargs = {}
    described = f'a {detected[0]} job of {detected[1]} processes'
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  global _heartbeat_timeout_s
  _heartbeat_timeout_s = heartbeat_timeout_s
  # If the coordinator cannot be reached, the runtime aborts the process
  # after the timeout with a terse RPC error: this line says what it means.
  logging.info(
      'Starting the distributed runtime (%s%s). A process that cannot reach '
      'the coordinator gives up after --initialization_timeout_s=%d s (a '
      'wrong address or port, a firewall, or process 0 not started); one '
      'silent for --heartbeat_timeout_s=%d s is declared lost.', described,
      f', coordinator {coordinator_address}' if coordinator_address else '',
      initialization_timeout_s, heartbeat_timeout_s)
  try:
    jax.distributed.initialize(
        **kwargs, heartbeat_timeout_seconds=heartbeat_timeout_s,
        initialization_timeout=initialization_timeout_s)
  except Exception as e:  # pylint: disable=broad-except
    raise ClusterStartError(
        f'{described} was detected, but the distributed runtime could not '
        f'start ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
        '). Refusing to run as a single process.') from e
  logging.info('JAX distributed runtime: process %d of %d.',
               jax.process_index(), jax.process_count())
  return True


def initialize_from_flags(flag_values: flags.FlagValues = flags.FLAGS
                          ) -> bool:
  """`initialize` with the flags of `define_flags`, for a CLI's main."""
  try:
    return initialize(
        flag_values.coordinator_address, flag_values.num_processes,
        flag_values.process_id,
        heartbeat_timeout_s=flag_values.heartbeat_timeout_s,
        initialization_timeout_s=flag_values.initialization_timeout_s)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  except ClusterStartError as e:
    raise SystemExit(str(e)) from e  # One line, exit status 1.


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op alone)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def share_from_process_0(text: str) -> str:
  """Process 0's `text`, on every process (`text` alone in one process).

  For a decision only process 0 can make (e.g. whether the workdir's lease
  was granted), so that every process acts on the same answer.
  """
  if jax.process_count() == 1:
    return text
  encoded = np.frombuffer(text.encode(), np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int32(encoded.size)))
  padded = np.zeros(size, np.uint8)
  if jax.process_index() == 0:
    padded[:] = encoded
  shared = multihost_utils.broadcast_one_to_all(padded)
  return np.asarray(shared, np.uint8).tobytes().decode()


# What a collective or runtime call raises when a peer process is gone: gloo
# (CPU) reports the closed connection, gRPC the unreachable coordinator.
_PEER_FAILURE = re.compile(
    r'Gloo|Connection (reset|closed) by peer|UNAVAILABLE|coordination service'
    r'|heartbeat', re.IGNORECASE)


def is_peer_failure(error: BaseException) -> bool:
  """Whether `error`, raised in a multi-process run, says a peer is gone."""
  return (jax.process_count() > 1 and
          bool(_PEER_FAILURE.search(f'{type(error).__name__}: {error}')))


def _lost_processes(wait_s: float) -> list[int] | None:
  """The processes the runtime has declared dead, or None if unknown.

  The coordination service answers once it knows who is alive: when the
  lost process's heartbeats have been missing for the heartbeat timeout.
  """
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  client = jax_distributed.global_state.client
  everyone = list(range(jax.process_count()))
  answer = []

  def ask():
    try:
      answer.append(sorted(set(everyone) - set(client.get_live_nodes(
          everyone))))
    except Exception:  # pylint: disable=broad-except
      answer.append([0])  # The coordinator (process 0) is unreachable.
  asker = threading.Thread(target=ask, daemon=True)
  asker.start()
  asker.join(wait_s)
  return answer[0] if answer else None


def exit_for_lost_process(error: BaseException, last_checkpoint: str
                          ) -> None:
  """Logs that a peer process is gone, names it, and exits with status 1.

  Called by the training loop when `is_peer_failure(error)`. Exits with
  `os._exit`: a normal exit would first wait at the runtime's shutdown
  barrier for the process that is gone. The runtime may stop this process
  first, when its heartbeat timeout passes; its own log line names the lost
  task then.

  Args:
    error: what the failed step raised.
    last_checkpoint: where training resumes from, for the message.
  """
  wait_s = _heartbeat_timeout_s + 15  # The runtime knows by then.
  first_line = str(error).strip().splitlines()[0] if str(error) else ''
  logging.error(
      'Process %d of %d: a step failed because another process is gone '
      '(%s: %s). Waiting up to %.0f s for the runtime to name it. %s',
      jax.process_index(), jax.process_count(), type(error).__name__,
      first_line[:300], wait_s, last_checkpoint)
  logging.flush()
  lost = _lost_processes(wait_s)
  named = (f'lost process(es): {", ".join(map(str, lost))}' if lost else
           'the lost process was not named in time')
  message = (f'Process {jax.process_index()} of {jax.process_count()} stops: '
             f'{named} of {jax.process_count()}. {last_checkpoint}')
  logging.error(message)
  logging.flush()
  print(message, file=sys.stderr, flush=True)
  os._exit(1)  # pylint: disable=protected-access


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
