"""The training loop: sharding, resumption, preemption, non-finite losses.

Runs the real `train_and_evaluate` on the embedded sample with a tiny config
(32x32 crops, encoder height 32) so a run takes seconds on a CPU.
"""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tree_assertions  # tests/ is on sys.path.
from expcorr_jax import checkpointing
from expcorr_jax import config_args
from expcorr_jax import pixels
from expcorr_jax import train
from expcorr_jax.tasks import uec as uec_task

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _get_config(arg=None):
  return config_args.load_config(REPO_ROOT / 'configs' / 'uec.py', arg)


def tiny_config(data_dir, num_train_steps=6):
  config = _get_config('runlocal')
  config.data.data_dir = data_dir
  config.data.crop_size = 32
  config.batch_size = 8
  config.model_encoder_height = 32
  config.num_train_steps = num_train_steps
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.eval_every_steps = 1000
  config.eval.max_images = 2
  config.eval.protocols = ('full',)
  config.eval.num_grid_images = 1
  return config


def _params(workdir):
  params, _, step = checkpointing.load_params(workdir)
  return params, step


def _random_batch(batch_size=8, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
          for k in ('input', 'target', 'ref_lo', 'ref_hi')}


def test_sharded_step_equals_single_device_step():
  assert jax.device_count() == 8  # tests/conftest.py simulates 8 devices.
  config = tiny_config(None)
  model = uec_task.create_model(config)
  # SGD keeps the update linear in the gradient, so the comparison measures
  # the sharded computation itself; Adam's g / sqrt(v) would amplify float32
  # rounding of near-zero gradient entries up to the learning rate.
  optimizer = optax.sgd(0.5)
  batch = _random_batch()
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = train.make_mesh(devices)
    state = train.init_state(model, config, optimizer, mesh)
    step_fn = train.make_train_step(model, config, optimizer, mesh)
    global_batch = train.make_global_batch(batch, mesh)
    assert len(global_batch['input'].sharding.device_set) == len(devices)
    for _ in range(3):
      state, metrics = step_fn(state, global_batch)
    kernel = state.params['corrector']['encoder']['kernel']
    assert kernel.sharding.is_fully_replicated
    results.append((jax.device_get(state.params), float(metrics['loss'])))
  (single, loss_single), (sharded, loss_sharded) = results
  # The only difference is the order of the cross-device sum of gradients,
  # so the results agree to float32 rounding.
  assert loss_sharded == pytest.approx(loss_single, rel=1e-6)
  for x, y in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
  # ...and training moved the parameters well beyond that tolerance.
  start = train.init_state(model, config, optimizer,
                           train.make_mesh(jax.devices()[:1])).params
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(jax.device_get(start)), jax.tree.leaves(single)))
  assert moved > 1e-4


def test_training_outputs_equal_separate_passes():
  config = tiny_config(None)
  model = uec_task.create_model(config)
  params = uec_task.init_params(model, jax.random.key(1))
  batch = {k: pixels.to_float(jnp.asarray(v))
           for k, v in _random_batch(2, 24, seed=3).items()}
  from expcorr_jax.models import uec  # pylint: disable=g-import-not-at-top
  apply = lambda *a, **k: model.apply({'params': params}, *a, **k)
  restored, out_lo, out_hi = apply(
      batch['input'], batch['target'], batch['ref_lo'], batch['ref_hi'], 3,
      method=uec.UEC.training_outputs)
  np.testing.assert_allclose(restored, apply(
      batch['input'], batch['target'], 3, method=uec.UEC.multi_pass),
                             atol=1e-6)
  np.testing.assert_allclose(out_lo, apply(
      batch['input'], batch['ref_lo'], method=uec.UEC.single_pass), atol=1e-6)
  np.testing.assert_allclose(out_hi, apply(
      batch['input'], batch['ref_hi'], method=uec.UEC.single_pass), atol=1e-6)


def test_run_writes_checkpoints_summaries_and_evaluation(sample_data_dir,
                                                         tmp_path):
  config = tiny_config(sample_data_dir, num_train_steps=4)
  report = train.train_and_evaluate(config, str(tmp_path))
  assert set(report) == {'full'}
  assert report['full']['all']['count'] == 2
  saved = json.loads((tmp_path / 'eval_step_4.json').read_text())
  assert saved['step'] == 4 and saved['results']['full']['all']['count'] == 2
  assert (tmp_path / 'eval_grid_step_4.png').is_file()
  assert list(tmp_path.glob('events.out.tfevents.*'))
  _, step = _params(tmp_path)
  assert step == 4
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']


def test_sigterm_saves_and_rerun_matches_uninterrupted(sample_data_dir,
                                                      tmp_path, monkeypatch):
  config = tiny_config(sample_data_dir)
  uninterrupted = tmp_path / 'uninterrupted'
  train.train_and_evaluate(config, str(uninterrupted))

  preempted = tmp_path / 'preempted'
  real_make_global_batch = train.make_global_batch
  calls = []

  def preempt_at_third_step(batch, mesh):
    calls.append(1)
    if len(calls) == 3:  # Preempted while step 3 runs.
      os.kill(os.getpid(), signal.SIGTERM)
    return real_make_global_batch(batch, mesh)

  monkeypatch.setattr(train, 'make_global_batch', preempt_at_third_step)
  assert train.train_and_evaluate(config, str(preempted)) is None
  _, step = _params(preempted)
  assert step == 3  # Saved at the step it was preempted at, off schedule.
  monkeypatch.undo()

  train.train_and_evaluate(config, str(preempted))
  final, step = _params(preempted)
  expected, expected_step = _params(uninterrupted)
  assert step == expected_step == 6
  tree_assertions.assert_trees_equal(final, expected)


def test_killed_run_resumes_to_the_uninterrupted_params(sample_data_dir,
                                                       tmp_path):
  steps = 12
  config = tiny_config(sample_data_dir, num_train_steps=steps)
  uninterrupted = tmp_path / 'uninterrupted'
  train.train_and_evaluate(config, str(uninterrupted))

  killed = tmp_path / 'killed'
  overrides = [
      f'--config.data.data_dir={sample_data_dir}',
      '--config.data.crop_size=32', '--config.batch_size=8',
      '--config.model_encoder_height=32',
      f'--config.num_train_steps={steps}', '--config.log_every_steps=2',
      '--config.checkpoint_every_steps=2', '--config.eval_every_steps=1000',
      '--config.eval.max_images=2', "--config.eval.protocols=('full',)",
      '--config.eval.num_grid_images=1']
  process = subprocess.Popen(
      [sys.executable, '-m', 'expcorr_jax.main',
       f'--config={REPO_ROOT / "configs" / "uec.py"}:runlocal',
       f'--workdir={killed}', *overrides],
      cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 240
  while not (killed / 'checkpoints' / '4').is_dir():
    assert process.poll() is None, process.stderr.read().decode()[-3000:]
    assert time.time() < deadline, 'no checkpoint 4 within 240 s'
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)  # No chance to save: a hard kill.
  process.wait()
  _, step_at_kill = _params(killed)
  assert 4 <= step_at_kill < steps

  train.train_and_evaluate(config, str(killed))
  final, step = _params(killed)
  expected, _ = _params(uninterrupted)
  assert step == steps
  tree_assertions.assert_trees_equal(final, expected)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    sample_data_dir, tmp_path, monkeypatch):
  config = tiny_config(sample_data_dir)
  real_loss_fn = uec_task.loss_fn
  real_make_global_batch = train.make_global_batch
  calls = []

  def loss_fn(model, params, batch, config, **optional):
    result = real_loss_fn(model, params, batch, config, **optional)
    return result._replace(loss=result.loss + jnp.sum(batch['poison']))

  def poisoned_batch(batch, mesh):
    calls.append(1)
    poison = np.full((8,), np.nan if len(calls) == 3 else 0.0, np.float32)
    return real_make_global_batch(dict(batch, poison=poison), mesh)

  monkeypatch.setattr(uec_task, 'TASK', dataclasses.replace(
      uec_task.TASK, loss_fn=loss_fn))
  monkeypatch.setattr(train, 'make_global_batch', poisoned_batch)
  with pytest.raises(FloatingPointError, match='step 3'):
    train.train_and_evaluate(config, str(tmp_path))
  params, step = _params(tmp_path)
  assert step == 2  # Nothing was saved after the bad step.
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))


def test_step_with_finite_loss_but_non_finite_gradient_is_not_applied(
    monkeypatch):
  config = tiny_config(None)
  model = uec_task.create_model(config)
  real_loss_fn = uec_task.loss_fn

  def loss_fn(model, params, batch, config, **optional):
    # Adds exactly 0 to the loss, but the norm's gradient at a zero vector
    # (poison == 0) is NaN.
    result = real_loss_fn(model, params, batch, config, **optional)
    kernel = params['corrector']['encoder']['kernel']
    return result._replace(loss=result.loss + 0.0 * jnp.linalg.norm(
        kernel * batch['poison'][0]))

  monkeypatch.setattr(uec_task, 'TASK', dataclasses.replace(
      uec_task.TASK, loss_fn=loss_fn))
  optimizer = optax.adam(1e-3)
  mesh = train.make_mesh(jax.devices()[:1])
  state = train.init_state(model, config, optimizer, mesh)
  step_fn = train.make_train_step(model, config, optimizer, mesh)
  before = jax.device_get(state.params)
  batch = dict(_random_batch(), poison=np.ones((8,), np.float32))
  state, metrics = step_fn(state, train.make_global_batch(batch, mesh))
  assert bool(metrics['finite'])
  moved = jax.device_get(state.params)
  batch['poison'][:] = 0.0
  state, metrics = step_fn(state, train.make_global_batch(batch, mesh))
  assert np.isfinite(float(metrics['loss']))
  assert not bool(metrics['finite'])
  assert int(state.step) == 1  # The second step was not applied.
  tree_assertions.assert_trees_equal(jax.device_get(state.params), moved)
  assert not np.array_equal(moved['corrector']['encoder']['kernel'],
                            before['corrector']['encoder']['kernel'])


@pytest.mark.parametrize('field,value,message', [
    ('batch_size', 6, 'divisible by the 8 devices'),
    ('num_train_steps', 0, 'num_train_steps must be a positive integer'),
    ('model', 'unet', "Unknown model 'unet'"),
    ('eval.protocols', ('full', 'psnr_only'),
     r"Unknown eval protocols \['psnr_only'\] for 'uec'"),
])
def test_bad_config_values_are_named(field, value, message):
  config = tiny_config(None)
  parent, _, name = field.rpartition('.')
  setattr(config[parent] if parent else config, name, value)
  with pytest.raises(ValueError, match=message):
    train.validate_config(config)


@pytest.mark.parametrize('config_file', [
    'uec.py', 'recnet.py', 'erl_autoencoder.py', 'erl_bcm.py'])
def test_every_config_defines_every_key_the_trainer_reads(config_file):
  args = (None, 'runlocal') + (('runlocal,mixed', 'runlocal,erl')
                                if config_file == 'recnet.py' else ())
  for arg in args:
    config = config_args.load_config(REPO_ROOT / 'configs' / config_file, arg)
    assert train.missing_keys(config) == []


def test_a_missing_key_is_named_not_defaulted():
  config = tiny_config(None)
  del config.data['target_ev']
  del config.optimizer['decay_steps']
  with pytest.raises(ValueError, match=r'lacks data\.target_ev, '
                     r'optimizer\.decay_steps, which the trainer reads'):
    train.validate_config(config)


def test_a_misspelled_command_line_key_fails_naming_it(tmp_path):
  """The user's path: config_flags refuses keys the config file lacks."""
  result = subprocess.run(
      [sys.executable, '-m', 'expcorr_jax.main', '--config=configs/uec.py',
       f'--workdir={tmp_path / "run"}',
       '--config.optimizer.decay_stpes=(5,)'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  assert 'Did you mean "decay_steps" instead of "decay_stpes"?' in (
      result.stderr)
  assert not (tmp_path / 'run').exists()  # Nothing started.
