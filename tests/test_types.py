"""The task contract is checked by a type checker, not only documented.

mypy (configured in setup.cfg) runs on `expcorr_jax/tasks`: the contract and
every built-in method must type-check, and a task whose callables break the
contract's signatures (`contract.LossFn`, `CorrectFn`, `TrainLoaderFn`) must
fail it, so the check is known to bite.
"""

import pathlib
import subprocess
import sys
import textwrap

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _mypy(*targets: str,
          cache_dir: pathlib.Path) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, '-m', 'mypy', '--config-file', 'setup.cfg',
       '--cache-dir', str(cache_dir), *targets],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_contract_and_methods_type_check(tmp_path):
  result = _mypy('expcorr_jax/tasks', cache_dir=tmp_path / 'cache')
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'Success: no issues found' in result.stdout


def test_a_task_breaking_the_contract_fails_the_check(tmp_path):
  bad = tmp_path / 'bad_task.py'
  bad.write_text(textwrap.dedent('''
      from expcorr_jax.tasks import contract

      def loss_fn(model, params, batch, config, frozen):  # No default.
        return contract.LossOutput(params, {})

      def correct(model, params, images, ref):  # Not `reference=None`.
        return images

      TASK = contract.Task(
          name='bad', create_model=lambda config: None,
          init_params=lambda model, rng: None, loss_fn=loss_fn,
          make_train_loader=lambda config, source: None, correct=correct)
      '''))
  result = _mypy(str(bad), cache_dir=tmp_path / 'cache')
  assert result.returncode == 1, result.stdout + result.stderr
  for expected in ('"loss_fn" to "Task" has incompatible type',
                   '"make_train_loader" to "Task" has incompatible type',
                   '"correct" to "Task" has incompatible type'):
    assert expected in result.stdout, result.stdout
