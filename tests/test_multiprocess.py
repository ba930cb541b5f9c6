"""Multi-process training: real `python -m expcorr_jax.main` processes.

Two JAX processes of two CPU devices each on localhost (the distributed
runtime through explicit flags, CPU collectives through gloo, one grain
worker process each where preempted), training a tiny UEC. Checked:
- the first run starts from an empty data_dir: process 0 builds the dataset
  once while process 1 waits at the barrier;
- a SIGTERM to process 1, and on the rerun one to process 0, makes both save
  the same step and exit 0; the last rerun ends with the parameters of the
  uninterrupted run;
- a SIGKILL of process 1 (a lost host) makes process 0 exit non-zero within
  the heartbeat timeout, naming process 1; the last checkpoint is intact and
  a rerun of both resumes from it to the uninterrupted parameters;
- the 2-process evaluation report equals a 1-process evaluation of the same
  checkpoint, which also shows a 2-process checkpoint restoring into one
  process.
Every wait is bounded, every child is killed and reaped after each test
whatever happened, and params are compared leaf by leaf with their tree
structure.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

import conftest  # tests/ is on sys.path.
import gcs_server
import tree_assertions
from expcorr_jax import checkpointing

# One xdist worker runs this module (setup.cfg: --dist loadfile): its module
# fixture (a 2-process run) is built once, which the fixture checks.

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 16
TIMEOUT_S = 240  # For one launch, all its processes together.
# A grain worker process per training process (the runs without one are
# the references: the batches are the same either way).
WITH_GRAIN_WORKER = '--config.data.worker_count=1'


# Every process a test launched, each the leader of its own process group
# (its grain workers, or the Slurm script's tasks, are in it too): the whole
# group is killed and the leader reaped after the test, whatever happened.
_LAUNCHED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _reap_children():
  yield
  while _LAUNCHED:
    process = _LAUNCHED.pop()
    try:
      os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # The whole group has exited.
      pass
    process.wait()


def _launch(workdir: pathlib.Path, num_processes: int, data_dir: str,
            cache_dir: pathlib.Path, *extra_flags: str
            ) -> list[subprocess.Popen]:
  """Starts the processes of one run; logs go to <workdir>.p<i>.log (a
  rerun's are appended)."""
  env = dict(os.environ,
             XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  port = gcs_server.free_port()
  processes = []
  for index in range(num_processes):
    command = [
        sys.executable, '-m', 'expcorr_jax.main',
        '--config=configs/uec.py:runlocal', f'--workdir={workdir}',
        f'--config.data.data_dir={data_dir}', '--config.data.crop_size=32',
        '--config.model_encoder_height=32', '--config.batch_size=4',
        f'--config.num_train_steps={STEPS}', '--config.log_every_steps=1',
        '--config.checkpoint_every_steps=8', '--config.eval_every_steps=1000',
        '--config.eval.max_images=3', '--config.eval.num_grid_images=1',
        *extra_flags]
    if num_processes > 1:
      command += [f'--coordinator_address=localhost:{port}',
                  f'--num_processes={num_processes}', f'--process_id={index}']
    log = open(f'{workdir}.p{index}.log', 'a')
    processes.append(subprocess.Popen(command, cwd=REPO_ROOT, env=env,
                                      start_new_session=True,
                                      stdout=log, stderr=subprocess.STDOUT))
    _LAUNCHED.append(processes[-1])
    log.close()
  return processes


def _wait(processes: list[subprocess.Popen], workdir: pathlib.Path,
          deadline: float) -> list[int]:
  """Exit codes; kills every process and fails if one outlives `deadline`."""
  codes = []
  for process in processes:
    try:
      codes.append(process.wait(timeout=max(1.0, deadline - time.time())))
    except subprocess.TimeoutExpired:
      for other in processes:
        other.kill()
      pytest.fail(f'A process of {workdir} hung; logs:\n'
                  f'{_logs(workdir, len(processes))}')
  return codes


def _run(workdir, num_processes, data_dir, cache_dir, *extra_flags) -> None:
  processes = _launch(workdir, num_processes, data_dir, cache_dir,
                      *extra_flags)
  codes = _wait(processes, workdir, time.time() + TIMEOUT_S)
  assert codes == [0] * num_processes, _logs(workdir, num_processes)


def _logs(workdir, num_processes, tail: int | None = 3000) -> str:
  """The processes' logs (the last `tail` characters of each; None: all)."""
  texts = [pathlib.Path(f'{workdir}.p{i}.log').read_text()
           for i in range(num_processes)]
  return '\n'.join(text[-tail:] if tail else text for text in texts)


def _wait_for_log(processes, workdir, text: str, deadline: float) -> None:
  """Waits until process 0's log holds `text` (after what it held before)."""
  log = pathlib.Path(f'{workdir}.p0.log')
  start = len(log.read_text())
  while text not in log.read_text()[start:]:
    if time.time() > deadline or any(p.poll() is not None for p in processes):
      for process in processes:
        process.kill()
      pytest.fail(f'No {text!r} logged:\n' + _logs(workdir, 2))
    time.sleep(0.02)


def _params(workdir):
  params, _, step = checkpointing.load_params(str(workdir))
  return params, step


@pytest.fixture(scope='module')
def run_dirs(tmp_path_factory):
  """(data_dir, compilation cache, the uninterrupted 2-process workdir).

  The data_dir starts empty: the run builds the sample behind the barrier.
  """
  conftest.claim_one_worker(tmp_path_factory, 'multiprocess')
  root = tmp_path_factory.mktemp('multiprocess')
  cache = root / 'compilation_cache'
  data_dir = root / 'tfds'
  uninterrupted = root / 'uninterrupted'
  _run(uninterrupted, 2, str(data_dir), cache)
  return str(data_dir), cache, uninterrupted


def test_the_dataset_is_built_once_behind_the_barrier(run_dirs):
  _, _, uninterrupted = run_dirs
  logs = [pathlib.Path(f'{uninterrupted}.p{i}.log').read_text()
          for i in range(2)]
  # Process 0 built it; process 1 waited and found it prepared.
  assert [log.count('Building multi_exposure/sample into') for log in logs
          ] == [1, 0], _logs(uninterrupted, 2)
  assert all(f'step {STEPS}/{STEPS}' in log for log in logs)


def test_sigterm_to_either_process_saves_the_same_step_and_resumes_exactly(
    run_dirs):
  data_dir, cache, uninterrupted = run_dirs
  preempted = uninterrupted.parent / 'preempted'
  saved_steps = []
  # Process 1 first, then (on the rerun) process 0, which hosts the
  # coordinator. Each signal goes out two steps into the run.
  for target in (1, 0):
    processes = _launch(preempted, 2, data_dir, cache, WITH_GRAIN_WORKER)
    deadline = time.time() + TIMEOUT_S
    first = saved_steps[-1] if saved_steps else 0
    _wait_for_log(processes, preempted, f'step {first + 2}/', deadline)
    processes[target].send_signal(signal.SIGTERM)
    assert _wait(processes, preempted, deadline) == [0, 0], _logs(
        preempted, 2)
    _, step = _params(preempted)
    assert first + 2 <= step < STEPS  # Saved mid-training, by both.
    saved_steps.append(step)
  logs = _logs(preempted, 2, tail=None)
  assert logs.count('Preemption agreed by all processes') == 4, logs
  assert f'Resuming at step {saved_steps[0]} of {STEPS}' in logs

  _run(preempted, 2, data_dir, cache, WITH_GRAIN_WORKER)  # To the end.
  assert f'Resuming at step {saved_steps[1]} of {STEPS}' in _logs(
      preempted, 2, tail=None)
  (expected, expected_step), (got, got_step) = (_params(uninterrupted),
                                                _params(preempted))
  assert expected_step == got_step == STEPS
  tree_assertions.assert_trees_equal(got, expected)


HEARTBEAT_TIMEOUT_S = 5


def test_a_lost_process_stops_the_other_and_the_rerun_resumes(run_dirs):
  """SIGKILL of process 1: process 0 exits non-zero within the heartbeat
  timeout (plus the wait for the runtime to name the lost process), naming
  process 1; the rerun resumes from the last checkpoint."""
  data_dir, cache, uninterrupted = run_dirs
  lost = uninterrupted.parent / 'lost'
  # A long run that is frozen (SIGSTOP, so it cannot reach its next
  # checkpoint) once it is past step 8's, then killed: a host that dies.
  processes = _launch(lost, 2, data_dir, cache,
                      f'--heartbeat_timeout_s={HEARTBEAT_TIMEOUT_S}',
                      '--config.num_train_steps=100000')
  deadline = time.time() + TIMEOUT_S
  _wait_for_log(processes, lost, 'step 9/', deadline)
  processes[1].send_signal(signal.SIGSTOP)
  processes[1].kill()
  killed = time.time()
  try:
    code = processes[0].wait(timeout=HEARTBEAT_TIMEOUT_S + 40)
  except subprocess.TimeoutExpired:
    pytest.fail('Process 0 outlived its lost peer:\n' + _logs(lost, 2))
  log = pathlib.Path(f'{lost}.p0.log').read_text()
  assert code != 0, log[-3000:]
  assert time.time() - killed < HEARTBEAT_TIMEOUT_S + 40
  # Named by the training loop, or by the runtime's own stop, whichever
  # comes first once the heartbeats have been missed.
  assert ('lost process(es): 1 of 2' in log or
          'stopped sending heartbeats):\n1\n' in log), log[-3000:]
  _, step = _params(lost)
  assert step == 8, log[-3000:]

  _run(lost, 2, data_dir, cache)  # Both rerun: resumes from step 8.
  assert f'Resuming at step 8 of {STEPS}' in _logs(lost, 2, tail=None)
  (expected, expected_step), (got, got_step) = (_params(uninterrupted),
                                                _params(lost))
  assert expected_step == got_step == STEPS
  tree_assertions.assert_trees_equal(got, expected)


def test_two_process_checkpoint_evaluates_alike_in_one_process(run_dirs):
  data_dir, cache, uninterrupted = run_dirs
  report_name = f'eval_step_{STEPS}.json'
  two_process = json.loads((uninterrupted / report_name).read_text())
  assert two_process['results']['full']['all']['count'] == 3
  single = uninterrupted.parent / 'single'
  shutil.copytree(uninterrupted, single)
  (single / report_name).unlink()
  # The same workdir in one process: the 2-process checkpoint restores (the
  # data iterators cannot carry over, and the log says so), nothing is left
  # to train, and the final evaluation runs on one process.
  _run(single, 1, data_dir, cache)
  log = _logs(single, 1, tail=None)
  assert 'written by 2 processes, this run has 1' in log
  assert f'Resuming at step {STEPS} of {STEPS}' in log
  one_process = json.loads((single / report_name).read_text())
  assert one_process['results'] == two_process['results']


def test_the_slurm_script_saves_requeues_and_resumes(run_dirs, tmp_path):
  """scripts/slurm/train.sbatch with stand-in srun/scancel/scontrol on PATH
  (tests/slurm_standins; they record their calls, and srun runs the tasks
  here): USR1 before the time limit -> SIGTERM to the tasks, both save and
  exit 0, `scontrol requeue`; the requeued job resumes and finishes, and is
  not requeued again."""
  data_dir, cache, uninterrupted = run_dirs
  workdir = tmp_path / 'slurm_run'
  env = dict(
      os.environ, PATH=f'{REPO_ROOT / "tests" / "slurm_standins"}:'
      f'{pathlib.Path(sys.executable).parent}:{os.environ["PATH"]}',
      STANDIN_DIR=str(tmp_path), SLURM_JOB_ID='4242', SLURM_NTASKS='2',
      SLURM_JOB_NODELIST='node[1-2]', COORDINATOR_PORT=str(gcs_server.free_port()),
      XLA_FLAGS='--xla_force_host_platform_device_count=2',
      JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=str(cache),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  command = [
      'bash', 'scripts/slurm/train.sbatch', 'configs/uec.py:runlocal',
      str(workdir), f'--config.data.data_dir={data_dir}',
      '--config.data.crop_size=32', '--config.model_encoder_height=32',
      '--config.batch_size=4', f'--config.num_train_steps={STEPS}',
      '--config.log_every_steps=1', '--config.checkpoint_every_steps=8',
      '--config.eval_every_steps=1000', '--config.eval.max_images=3',
      '--config.eval.num_grid_images=1']
  task_log = tmp_path / 'task0.log'

  def submit(restart: int) -> subprocess.Popen:
    script_log = open(tmp_path / 'job.log', 'a')  # --open-mode=append
    job = subprocess.Popen(command, cwd=REPO_ROOT, stdout=script_log,
                           start_new_session=True,
                           stderr=subprocess.STDOUT,
                           env=dict(env, SLURM_RESTART_COUNT=str(restart)))
    script_log.close()
    _LAUNCHED.append(job)
    return job

  def logs() -> str:
    return '\n'.join(path.read_text()
                     for path in sorted(tmp_path.glob('*.log')))

  job = submit(0)
  deadline = time.time() + TIMEOUT_S
  while not task_log.exists() or 'step 2/' not in task_log.read_text():
    if time.time() > deadline or job.poll() is not None:
      pytest.fail('No step 2 logged:\n' + logs()[-6000:])
    time.sleep(0.02)
  job.send_signal(signal.SIGUSR1)  # --signal=B:USR1@...: to the script.
  assert job.wait(timeout=max(1, deadline - time.time())) == 0, logs()[-6000:]
  calls = (tmp_path / 'calls').read_text().splitlines()
  assert calls[-2:] == ['scancel --signal=TERM 4242',
                        'scontrol requeue 4242'], calls
  assert any(call.startswith('srun --kill-on-bad-exit=1') for call in calls)
  _, saved = _params(workdir)
  assert 2 <= saved < STEPS, logs()[-6000:]
  assert logs().count('Preemption agreed by all processes') == 2

  job = submit(1)  # The requeued job: same id, so it takes its lease back.
  assert job.wait(timeout=TIMEOUT_S) == 0, logs()[-6000:]
  assert (tmp_path / 'calls').read_text().splitlines()[-1].startswith('srun')
  assert f'Resuming at step {saved} of {STEPS}' in task_log.read_text()
  (expected, _), (got, got_step) = _params(uninterrupted), _params(workdir)
  assert got_step == STEPS
  tree_assertions.assert_trees_equal(got, expected)


def test_the_slurm_script_asks_slurm_for_what_it_needs():
  """The directives the requeue depends on (a typo there is silent)."""
  script = (REPO_ROOT / 'scripts' / 'slurm' / 'train.sbatch').read_text()
  directives = [line.split(None, 1)[1] for line in script.splitlines()
                if line.startswith('#SBATCH ')]
  for expected in ('--ntasks-per-node=1', '--signal=B:USR1@300',
                   '--requeue', '--open-mode=append',
                   '--output=logs/%x-%j.log'):
    assert expected in directives, directives
