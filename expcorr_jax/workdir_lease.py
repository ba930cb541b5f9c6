"""A workdir lease: one training job writes a workdir at a time.

Two unrelated jobs training in one workdir (a relaunch while the first still
runs, two users choosing the same bucket path, a split job) would interleave
their checkpoints, and a resumed run would mix both. So a training job holds
a lease: `<workdir>/lease.json`, written by process 0, naming the job, its
process count and host, with a heartbeat refreshed every
`stale_after_s / 6` seconds by a background thread.

A job that opens a workdir whose lease another job holds fails at start with
`WorkdirInUseError`, naming that job. It takes the lease over instead when
- the lease is the same job's (a Slurm job keeps its `SLURM_JOB_ID` when it
  is requeued, so a requeued job is never blocked by its own lease);
- the lease is stale: no heartbeat for `stale_after_s`
  (`config.workdir_lease_stale_s`, 300 s by default): the job is gone;
- the holder ran on this host and its process no longer exists (a crashed
  or killed run, rerun at once on the same machine).
The lease is removed when training ends (finished, preempted or failed);
only a job that is killed leaves it behind, to go stale.

The heartbeat thread also watches the lease: if another job has taken it
over (it found ours stale, e.g. after a long network partition), the next
checkpoint save stops this job (`WorkdirLeaseLostError`) instead of writing
beside the new holder.

The lease is a plain file on the path layer, so it works in a bucket too.
Taking it is write-then-confirm (read back after a short wait), not an
atomic create: two jobs started within the same second could in principle
both pass; the heartbeat check catches that at the first save.
"""

import dataclasses
import json
import os
import socket
import threading
import time
import uuid

from absl import logging
import jax

from data_prep import storage
from expcorr_jax import distributed

LEASE_FILE = 'lease.json'
DEFAULT_STALE_AFTER_S = 300
# How long a new holder waits before reading its lease back (a concurrent
# starter's write lands in between).
_CONFIRM_WAIT_S = 0.5


class WorkdirInUseError(RuntimeError):
  """Another training job holds the workdir's lease."""


class WorkdirLeaseLostError(RuntimeError):
  """Another job took this job's lease over while it was training."""


def job_id() -> str:
  """This job's identity: the same across a Slurm requeue, else per run.

  A Slurm job keeps its id (and array task) when requeued; elsewhere
  `EXPCORR_JOB_ID` names a job that should count as the same one across
  restarts (a TPU VM's startup script, say); otherwise each run is new.
  """
  if os.environ.get('EXPCORR_JOB_ID'):
    return os.environ['EXPCORR_JOB_ID']
  if os.environ.get('SLURM_JOB_ID'):
    task = os.environ.get('SLURM_ARRAY_TASK_ID')
    return f'slurm:{os.environ["SLURM_JOB_ID"]}' + (f'_{task}' if task else '')
  return f'run:{uuid.uuid4().hex[:12]}'


def _process_exists(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Exists, another user's.
    return True
  return True


@dataclasses.dataclass
class Lease:
  """One job's claim on a workdir, as stored in its lease file."""
  job: str
  token: str  # This run of the job (a requeued job gets a new one).
  host: str
  pid: int
  processes: int
  heartbeat: float  # time.time() of the last refresh.

  def describe(self, now: float) -> str:
    return (f'job {self.job} ({self.processes} process(es), host '
            f'{self.host}, pid {self.pid}), last heartbeat '
            f'{now - self.heartbeat:.0f} s ago')


def read(workdir: str) -> Lease | None:
  """The lease stored in `workdir`, or None (no file, or unreadable)."""
  file = storage.path(workdir) / LEASE_FILE
  try:
    fields = json.loads(file.read_text())
    return Lease(**fields)
  except FileNotFoundError:
    return None
  except (ValueError, TypeError) as e:  # Torn or foreign content.
    logging.warning('Ignoring the unreadable lease file %s (%s).', file, e)
    return None


def _takeover_reason(held: Lease, job: str, stale_after_s: float,
                     now: float) -> str | None:
  """Why `job` may take `held` over, or None when it may not."""
  if held.job == job:
    return f'it is this job\'s own lease ({held.describe(now)})'
  if now - held.heartbeat > stale_after_s:
    return f'it is stale ({held.describe(now)})'
  if held.host == socket.gethostname() and not _process_exists(held.pid):
    return (f'its process {held.pid} no longer runs on this host '
            f'({held.describe(now)})')
  return None


class WorkdirLease:
  """The lease process 0 holds while training; a context manager.

  `acquire` raises WorkdirInUseError when another live job holds the
  workdir; `check` raises WorkdirLeaseLostError once another job has taken
  the lease over.
  """

  def __init__(self, workdir: str, *, processes: int,
               stale_after_s: float = DEFAULT_STALE_AFTER_S):
    if stale_after_s <= 0:
      raise ValueError(f'config.workdir_lease_stale_s={stale_after_s} must be '
                       'positive (seconds without a heartbeat after which '
                       'a lease is taken over).')
    self._workdir = workdir
    self._file = storage.path(workdir) / LEASE_FILE
    self._stale_after_s = stale_after_s
    self._lease = Lease(job=job_id(), token=uuid.uuid4().hex,
                        host=socket.gethostname(), pid=os.getpid(),
                        processes=processes, heartbeat=0.0)
    self._stop = threading.Event()
    self._thread = None
    self._lost_to = None

  @property
  def job(self) -> str:
    return self._lease.job

  def _write(self) -> None:
    self._lease.heartbeat = time.time()
    storage.write_text(self._file,
                       json.dumps(dataclasses.asdict(self._lease)))

  def acquire(self) -> None:
    """Takes the lease, or raises WorkdirInUseError naming the holder."""
    held = read(self._workdir)
    if held is not None:
      now = time.time()
      reason = _takeover_reason(held, self.job, self._stale_after_s, now)
      if reason is None:
        raise WorkdirInUseError(
            f'The workdir {self._workdir} is in use by another training job: '
            f'{held.describe(now)} (lease file {self._file}). Two jobs in '
            'one workdir would interleave their checkpoints. Use another '
            '--workdir, or wait for that job to end. If it is dead, its '
            f'lease is taken over {self._stale_after_s:.0f} s after its last '
            'heartbeat (config.workdir_lease_stale_s), or delete the lease '
            'file.')
      logging.warning('Taking over the lease of %s: %s.', self._workdir,
                      reason)
    self._write()
    time.sleep(_CONFIRM_WAIT_S)
    now_held = read(self._workdir)
    if now_held is None or now_held.token != self._lease.token:
      raise WorkdirInUseError(
          f'Another training job took the lease of {self._workdir} at the '
          'same moment: '
          f'{now_held.describe(time.time()) if now_held else "gone"}. Use '
          'another --workdir.')
    self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                    name='workdir-lease')
    self._thread.start()
    logging.info('Holding the lease of %s as %s.', self._workdir, self.job)

  def _heartbeat(self) -> None:
    every_s = max(self._stale_after_s / 6, 0.2)
    while not self._stop.wait(every_s):
      try:
        held = read(self._workdir)
        if held is None or held.token != self._lease.token:
          self._lost_to = (held.describe(time.time()) if held else
                           'nobody (the lease file was deleted)')
          logging.error('The lease of %s was taken by %s.', self._workdir,
                        self._lost_to)
          return
        self._write()
      except OSError as e:  # A transient storage error: try again later.
        logging.warning('Could not refresh the lease of %s: %s',
                        self._workdir, e)

  def check(self) -> None:
    """Raises WorkdirLeaseLostError if another job has taken the lease."""
    if self._lost_to is not None:
      raise WorkdirLeaseLostError(
          f'Another job took over the lease of {self._workdir} ('
          f'{self._lost_to}): this job had been silent for over '
          f'{self._stale_after_s:.0f} s. Stopping without saving, so that '
          'the two do not interleave checkpoints.')

  def release(self) -> None:
    """Stops the heartbeat and removes the lease if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
      try:
        held = read(self._workdir)
        if held is not None and held.token == self._lease.token:
          self._file.unlink()
      except OSError as e:  # Storage gone: never mask why the run ended.
        logging.warning(
            'Could not remove the lease of %s (%s); the next job takes it '
            'over once it is %.0f s stale.', self._workdir, e,
            self._stale_after_s)

  def __enter__(self) -> 'WorkdirLease':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


class TrainingLease:
  """The lease as every process of a training job sees it.

  Process 0 holds the `WorkdirLease`; its answers (granted or refused; lost
  or not) are shared with every process, so all of them stop together.
  """

  def __init__(self, workdir: str, stale_after_s: float):
    self._lease = (WorkdirLease(workdir, processes=jax.process_count(),
                                stale_after_s=stale_after_s)
                   if jax.process_index() == 0 else None)

  def _on_every_process(self, action, error_type: type[Exception]) -> None:
    """Runs `action` of process 0's lease; raises its `error_type` on every
    process (a collective in a multi-process run)."""
    message = ''
    if self._lease is not None:
      try:
        action(self._lease)
      except error_type as e:
        message = str(e)
    message = distributed.share_from_process_0(message)
    if message:
      raise error_type(message)

  def __enter__(self) -> 'TrainingLease':
    self._on_every_process(WorkdirLease.acquire, WorkdirInUseError)
    return self

  def check(self) -> None:
    """On every process: raises WorkdirLeaseLostError if the lease is lost.

    A collective in a multi-process run: call it at the same step on all.
    """
    self._on_every_process(WorkdirLease.check, WorkdirLeaseLostError)

  def __exit__(self, *exc) -> None:
    if self._lease is not None:
      self._lease.release()
