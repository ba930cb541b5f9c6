"""The workdir lease: one training job per workdir, never a blocked requeue.

Each case is one the lease exists for: a second job refused while the first
is alive, a dead or requeued job's lease taken over, a job whose lease was
taken away stopping before it saves; on a local disk, in a bucket (the
session's GCS-compatible server), and through `python -m expcorr_jax.main`.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

import pytest

from expcorr_jax import workdir_lease

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _own_job(monkeypatch):
  """Each lease a test makes is its own job (no inherited job variables)."""
  for name in ('EXPCORR_JOB_ID', 'SLURM_JOB_ID', 'SLURM_ARRAY_TASK_ID'):
    monkeypatch.delenv(name, raising=False)


def _write_lease(workdir, **fields) -> None:
  lease = dict(job='run:other', token='t', host='elsewhere', pid=1,
               processes=2, heartbeat=time.time())
  lease.update(fields)
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  (pathlib.Path(workdir) / workdir_lease.LEASE_FILE).write_text(
      json.dumps(lease))


def test_a_lease_is_held_refreshed_and_released(tmp_path):
  lease = workdir_lease.WorkdirLease(str(tmp_path), processes=2,
                                     stale_after_s=1.2)  # Refresh: 0.2 s.
  with lease:
    first = workdir_lease.read(str(tmp_path))
    assert first.job == lease.job and first.processes == 2
    assert first.host == socket.gethostname() and first.pid == os.getpid()
    time.sleep(0.7)
    assert workdir_lease.read(str(tmp_path)).heartbeat > first.heartbeat
    lease.check()  # Still ours.
  assert not (tmp_path / workdir_lease.LEASE_FILE).exists()


def test_a_second_job_is_refused_while_the_first_is_alive(tmp_path):
  with workdir_lease.WorkdirLease(str(tmp_path), processes=1) as first:
    second = workdir_lease.WorkdirLease(str(tmp_path), processes=1)
    with pytest.raises(workdir_lease.WorkdirInUseError) as refused:
      second.acquire()
    message = str(refused.value)
    assert f'in use by another training job: job {first.job}' in message
    assert str(tmp_path / workdir_lease.LEASE_FILE) in message
    assert 'config.workdir_lease_stale_s' in message
    assert workdir_lease.read(str(tmp_path)).job == first.job  # Untouched.


@pytest.mark.parametrize('case', ['stale', 'requeued', 'dead_pid_here'])
def test_a_gone_or_requeued_job_is_taken_over(case, tmp_path, monkeypatch,
                                              caplog):
  if case == 'stale':  # No heartbeat for longer than stale_after_s.
    _write_lease(tmp_path, heartbeat=time.time() - 301)
    expected = 'it is stale'
  elif case == 'requeued':  # Slurm keeps the job id across a requeue.
    _write_lease(tmp_path, job='slurm:77')
    monkeypatch.setenv('SLURM_JOB_ID', '77')
    expected = "it is this job's own lease"
  else:  # A run killed on this host, rerun at once.
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    _write_lease(tmp_path, host=socket.gethostname(), pid=dead.pid)
    expected = f'its process {dead.pid} no longer runs on this host'
  lease = workdir_lease.WorkdirLease(str(tmp_path), processes=1,
                                     stale_after_s=300)
  with caplog.at_level('WARNING'), lease:
    assert workdir_lease.read(str(tmp_path)).job == lease.job
  assert expected in caplog.text


def test_a_job_whose_lease_was_taken_stops_before_saving(tmp_path):
  lease = workdir_lease.WorkdirLease(str(tmp_path), processes=1,
                                     stale_after_s=0.6)  # Refresh: 0.2 s.
  with lease:
    _write_lease(tmp_path, job='run:newcomer')
    deadline = time.time() + 10
    while time.time() < deadline:
      try:
        lease.check()
      except workdir_lease.WorkdirLeaseLostError as e:
        assert 'job run:newcomer' in str(e)
        assert 'Stopping without saving' in str(e)
        break
      time.sleep(0.05)
    else:
      pytest.fail('The lost lease was never noticed.')
  # The new holder's lease is not removed by the old one.
  assert workdir_lease.read(str(tmp_path)).job == 'run:newcomer'


def test_two_jobs_starting_at_once_get_one_lease(tmp_path):
  leases = [workdir_lease.WorkdirLease(str(tmp_path), processes=1)
            for _ in range(2)]
  outcomes = [None, None]

  def start(index):
    try:
      leases[index].acquire()
      outcomes[index] = 'held'
    except workdir_lease.WorkdirInUseError:
      outcomes[index] = 'refused'
  threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  for lease in leases:
    lease.release()
  assert sorted(outcomes) == ['held', 'refused']


def test_a_lease_in_a_bucket(gcs_bucket):
  workdir = f'{gcs_bucket}/run'
  with workdir_lease.WorkdirLease(workdir, processes=1) as first:
    assert workdir_lease.read(workdir).job == first.job
    with pytest.raises(workdir_lease.WorkdirInUseError,
                       match=f'{workdir}/lease.json'):
      workdir_lease.WorkdirLease(workdir, processes=1).acquire()
  assert workdir_lease.read(workdir) is None


def test_training_in_a_leased_workdir_fails_at_start(tmp_path):
  """`python -m expcorr_jax.main` on a workdir a live job holds: one line,
  exit 1, before any dataset is built or checkpoint written."""
  workdir, data_dir = tmp_path / 'run', tmp_path / 'tfds'
  with workdir_lease.WorkdirLease(str(workdir), processes=1) as holder:
    result = subprocess.run(
        [sys.executable, '-m', 'expcorr_jax.main',
         '--config=configs/uec.py:runlocal', f'--workdir={workdir}',
         f'--config.data.data_dir={data_dir}', '--config.batch_size=8'],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, JAX_PLATFORMS='cpu'), check=False)
  assert result.returncode == 1, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f'The workdir {workdir} is in use by another '
                         f'training job: job {holder.job}'), last
  assert not data_dir.exists()
  assert sorted(p.name for p in workdir.iterdir()) == []  # Released.
