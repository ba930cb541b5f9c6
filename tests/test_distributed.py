"""When `distributed.initialize` starts JAX's runtime, and when it must not.

`jax.distributed.initialize` is replaced by a recorder: these tests check the
decision (flags, detected clusters, one-task jobs), not the runtime, which
tests/test_multiprocess.py runs for real.
"""

import jax
import pytest

from expcorr_jax import distributed

_SLURM = {'SLURM_JOB_ID': '42', 'SLURM_STEP_NODELIST': 'node1',
          'SLURM_PROCID': '0', 'SLURM_LOCALID': '0'}
_CLUSTER_VARIABLES = tuple(_SLURM) + (
    'SLURM_NTASKS', 'OMPI_MCA_orte_hnp_uri', 'OMPI_COMM_WORLD_SIZE',
    'KUBERNETES_SERVICE_HOST')


@pytest.fixture
def calls(monkeypatch):
  """The calls to jax.distributed.initialize, made in a clean environment."""
  for name in _CLUSTER_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  recorded = []
  monkeypatch.setattr(jax.distributed, 'initialize',
                      lambda **kwargs: recorded.append(kwargs))
  monkeypatch.setattr(jax.config, 'update',
                      lambda name, value: recorded.append((name, value)))
  return recorded


def test_a_plain_run_stays_single_process(calls):
  assert distributed._detected_cluster() is None
  assert not distributed.initialize()
  assert not calls


def test_a_slurm_job_of_one_task_stays_single_process(calls, monkeypatch):
  for name, value in dict(_SLURM, SLURM_NTASKS='1').items():
    monkeypatch.setenv(name, value)
  assert distributed._detected_cluster() == ('SlurmCluster', 1)
  assert not distributed.initialize()
  assert not calls


def test_a_slurm_job_of_two_tasks_starts_the_runtime(calls, monkeypatch):
  for name, value in dict(_SLURM, SLURM_NTASKS='2').items():
    monkeypatch.setenv(name, value)
  assert distributed.initialize()
  # JAX detects the rest itself; CPU collectives go through gloo; a lost
  # process is declared dead after 60 s without heartbeats.
  assert calls == [('jax_cpu_collectives_implementation', 'gloo'),
                   {'heartbeat_timeout_seconds': 60,
                    'initialization_timeout': 300}]


def test_explicit_flags_are_passed_through(calls):
  assert distributed.initialize('host:1234', 2, 1, heartbeat_timeout_s=10,
                                initialization_timeout_s=20)
  assert calls[-1] == {'coordinator_address': 'host:1234',
                       'num_processes': 2, 'process_id': 1,
                       'heartbeat_timeout_seconds': 10,
                       'initialization_timeout': 20}
  calls.clear()
  assert not distributed.initialize('host:1234', 1, 0)  # One process.
  assert not calls


@pytest.mark.parametrize('args,message', [
    (('host:1234', None, 0), 'missing: --num_processes'),
    ((None, 2, None), 'missing: --coordinator_address, --process_id'),
    (('host:1234', 2, 2), r'--process_id=2 must be in \[0, '),
])
def test_incomplete_or_wrong_flags_are_named(calls, args, message):
  with pytest.raises(ValueError, match=message):
    distributed.initialize(*args)
  assert not calls


def test_single_process_helpers_need_no_runtime():
  assert jax.process_count() == 1
  distributed.barrier('nothing to wait for')
  local = jax.numpy.arange(6.0).reshape(2, 3)
  gathered = distributed.gather_from_processes(jax.device_get(local))
  assert gathered.shape == (1, 2, 3)


@pytest.mark.parametrize('environment, detected, failed', [
    ({'SLURM_NTASKS': '2'}, 'SLURM_NTASKS=2', 'JAX detected no cluster'),
    ({'OMPI_COMM_WORLD_SIZE': '4'}, 'OMPI_COMM_WORLD_SIZE=4',
     'JAX detected no cluster'),
    # JAX's Slurm detection raises on a bad task count (as a changed private
    # module or a metadata hiccup would): another variable still tells.
    ({**_SLURM, 'SLURM_NTASKS': 'x', 'PMI_SIZE': '2'}, 'PMI_SIZE=2',
     "JAX's cluster detection failed (ValueError"),
])
def test_a_cluster_that_cannot_start_is_refused_not_run_split(
    environment, detected, failed, tmp_path):
  """Real `python -m expcorr_jax.main` processes: one line, exit 1, and no
  workdir written, instead of every host training as process 0 of 1."""
  import os  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  env = {name: value for name, value in os.environ.items()
         if name not in _CLUSTER_VARIABLES + ('PMI_SIZE', 'SLURM_NPROCS',
                                              'TPU_WORKER_HOSTNAMES')}
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'expcorr_jax.main',
       '--config=configs/uec.py:runlocal', f'--workdir={workdir}'],
      cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True,
      text=True, timeout=120, env={**env, **environment,
                                   'JAX_PLATFORMS': 'cpu'}, check=False)
  assert result.returncode == 1, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('The environment says this job has several '
                         f'processes ({detected}), but {failed}'), last
  assert 'Refusing to run as a single process' in last
  assert not workdir.exists()


def test_an_unreachable_coordinator_stops_the_process_in_bounded_time(
    tmp_path):
  """A real process told of a coordinator nobody runs gives up after
  --initialization_timeout_s (non-zero exit), having said what it waits
  for, instead of waiting forever."""
  import os  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  import gcs_server  # pylint: disable=g-import-not-at-top
  port = gcs_server.free_port()  # Nothing listens there.
  started = time.time()
  result = subprocess.run(
      [sys.executable, '-m', 'expcorr_jax.main',
       '--config=configs/uec.py:runlocal', f'--workdir={tmp_path / "run"}',
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
       '--process_id=1', '--initialization_timeout_s=3'],
      cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True,
      text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      check=False)
  assert result.returncode != 0
  assert time.time() - started < 60
  assert ('gives up after --initialization_timeout_s=3 s (a wrong address '
          'or port' in result.stderr), result.stderr[-3000:]
  assert f'coordinator 127.0.0.1:{port}' in result.stderr
  assert not (tmp_path / 'run').exists()
