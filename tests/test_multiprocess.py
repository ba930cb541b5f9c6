"""Multi-process training: real `python -m expcorr_jax.main` processes.

Two JAX processes of two CPU devices each on localhost (the distributed
runtime through explicit flags, CPU collectives through gloo), training a
tiny UEC. Checked: a SIGTERM to ONE process makes both save the same step and
exit 0, and the rerun ends with the parameters of an uninterrupted run; the
2-process evaluation report equals a 1-process evaluation of the same
checkpoint, which also shows a 2-process checkpoint restoring into one
process. Every wait is bounded: a hang fails the test.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

import tree_assertions  # tests/ is on sys.path.
from expcorr_jax import checkpointing

# One xdist worker runs this module: its module fixture (a 2-process run) is
# built once, not once per worker (setup.cfg: --dist loadgroup).
pytestmark = pytest.mark.xdist_group('multiprocess')

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 16
TIMEOUT_S = 240  # For one launch, all its processes together.


# Every process a test launched, killed and reaped after it whatever happened.
_LAUNCHED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _reap_children():
  yield
  while _LAUNCHED:
    process = _LAUNCHED.pop()
    if process.poll() is None:
      process.kill()
    process.wait()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch(workdir: pathlib.Path, num_processes: int, data_dir: str,
            cache_dir: pathlib.Path) -> list[subprocess.Popen]:
  """Starts the processes of one run; logs go to <workdir>.p<i>.log."""
  env = dict(os.environ,
             XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  port = _free_port()
  processes = []
  for index in range(num_processes):
    command = [
        sys.executable, '-m', 'expcorr_jax.main',
        '--config=configs/uec.py:runlocal', f'--workdir={workdir}',
        f'--config.data.data_dir={data_dir}', '--config.data.crop_size=32',
        '--config.model_encoder_height=32', '--config.batch_size=4',
        f'--config.num_train_steps={STEPS}', '--config.log_every_steps=1',
        '--config.checkpoint_every_steps=8', '--config.eval_every_steps=1000',
        '--config.eval.max_images=3', '--config.eval.num_grid_images=1']
    if num_processes > 1:
      command += [f'--coordinator_address=localhost:{port}',
                  f'--num_processes={num_processes}', f'--process_id={index}']
    log = open(f'{workdir}.p{index}.log', 'w')
    processes.append(subprocess.Popen(command, cwd=REPO_ROOT, env=env,
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


def _run(workdir, num_processes, data_dir, cache_dir) -> None:
  processes = _launch(workdir, num_processes, data_dir, cache_dir)
  codes = _wait(processes, workdir, time.time() + TIMEOUT_S)
  assert codes == [0] * num_processes, _logs(workdir, num_processes)


def _logs(workdir, num_processes, tail: int | None = 3000) -> str:
  """The processes' logs (the last `tail` characters of each; None: all)."""
  texts = [pathlib.Path(f'{workdir}.p{i}.log').read_text()
           for i in range(num_processes)]
  return '\n'.join(text[-tail:] if tail else text for text in texts)


def _params(workdir):
  params, _, step = checkpointing.load_params(str(workdir))
  return params, step


@pytest.fixture(scope='module')
def run_dirs(sample_data_dir, tmp_path_factory):
  """(data_dir, compilation cache, the uninterrupted 2-process workdir)."""
  root = tmp_path_factory.mktemp('multiprocess')
  cache = root / 'compilation_cache'
  uninterrupted = root / 'uninterrupted'
  _run(uninterrupted, 2, sample_data_dir, cache)
  return sample_data_dir, cache, uninterrupted


def test_sigterm_to_one_process_saves_the_same_step_and_resumes_exactly(
    run_dirs):
  data_dir, cache, uninterrupted = run_dirs
  preempted = uninterrupted.parent / 'preempted'
  processes = _launch(preempted, 2, data_dir, cache)
  deadline = time.time() + TIMEOUT_S
  # Process 0 hosts the coordinator: the harder one to preempt. The signal
  # goes out once it has logged its second step.
  log = pathlib.Path(f'{preempted}.p0.log')
  while 'step 2/' not in log.read_text():
    if time.time() > deadline or processes[0].poll() is not None:
      for process in processes:
        process.kill()
      pytest.fail('No step 2 logged:\n' + _logs(preempted, 2))
    time.sleep(0.05)
  processes[0].send_signal(signal.SIGTERM)
  assert _wait(processes, preempted, deadline) == [0, 0], _logs(preempted, 2)
  logs = _logs(preempted, 2, tail=None)
  assert logs.count('Preemption agreed by all processes') == 2, logs
  _, step = _params(preempted)
  assert 2 <= step < STEPS  # Saved mid-training, by both processes.

  _run(preempted, 2, data_dir, cache)  # Resumes.
  assert f'Resuming at step {step} of {STEPS}' in _logs(preempted, 2,
                                                       tail=None)
  (expected, expected_step), (got, got_step) = (_params(uninterrupted),
                                                _params(preempted))
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
