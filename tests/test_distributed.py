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
  # JAX detects the rest itself; CPU collectives go through gloo.
  assert calls == [('jax_cpu_collectives_implementation', 'gloo'), {}]


def test_explicit_flags_are_passed_through(calls):
  assert distributed.initialize('host:1234', 2, 1)
  assert calls[-1] == {'coordinator_address': 'host:1234',
                       'num_processes': 2, 'process_id': 1}
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
