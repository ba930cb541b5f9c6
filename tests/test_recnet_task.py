"""RECNet task: loss wiring, sharded steps, the training loop on the sample.

Tiny settings (nc 4, one dual block, 32x32 crops) keep a run to seconds of
training; most of the time goes to XLA compiling the init and train step and
to full-resolution evaluation forward passes (XLA:CPU runs RECNet's grouped
convolutions slowly).
"""

import dataclasses
import functools
import json
import os
import pathlib
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from expcorr_jax import checkpointing
from expcorr_jax import config_args
from expcorr_jax import evaluation
from expcorr_jax import input_pipeline
from expcorr_jax import pixels
from expcorr_jax import protocols
from expcorr_jax import train
from expcorr_jax.metrics import image_quality
from expcorr_jax.tasks import recnet as recnet_task
from expcorr_jax.tasks import recnet_loss

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _get_config(arg=None):
  return config_args.load_config(REPO_ROOT / 'configs' / 'recnet.py', arg)


def tiny_config(data_dir=None, num_train_steps=6):
  config = _get_config('runlocal')
  config.data.data_dir = data_dir
  config.data.crop_size = 32
  config.batch_size = 8
  config.model_nc = 4
  config.model_num_blocks = 1
  config.num_train_steps = num_train_steps
  config.optimizer.decay_steps = ()
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.eval_every_steps = 1000
  config.eval.max_images = 1
  config.eval.protocols = ('recnet',)
  config.eval.num_grid_images = 1
  return config


@functools.lru_cache(maxsize=None)
def _vgg():
  return recnet_task.load_frozen(tiny_config())


def _random_batch(batch_size=8, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
          for k in ('input', 'target')}


def test_defaults_are_the_released_config():
  config = _get_config()
  assert (config.model, config.model_nc, config.model_num_blocks,
          config.model_num_heads) == ('recnet', 8, 5, 2)
  assert config.data.name == 'multi_exposure/sample'
  assert (config.batch_size, config.data.crop_size, config.data.flip) == (
      8, 384, True)
  assert not config.data.channel_permute  # An augmentation of runlocal only.
  assert (config.optimizer.learning_rate, config.optimizer.b1,
          config.optimizer.b2) == (1e-4, 0.9, 0.99)
  assert tuple(config.optimizer.decay_steps) == (150_000, 225_000)
  assert config.optimizer.decay_factor == 0.5
  assert config.num_train_steps == 300_000
  loss = config.loss
  assert (loss.pixel_weight, loss.ssim_weight, loss.mask_weight,
          loss.color_weight, loss.ecr_weight) == (1.0, 0.1, 0.25, 1.0, 0.1)
  assert (loss.pixel_loss, loss.paper_mask_sign) == ('l1', False)
  assert recnet_task.loss_config(config) == recnet_loss.RECNetLossConfig()
  assert tuple(config.eval.protocols) == ('recnet', 'enc_fecnet')
  runlocal = _get_config('runlocal')
  # Runlocal's batch of 2 is for one CPU device; tests/conftest.py simulates
  # 8, which the trainer rightly refuses with the fix in the message.
  with pytest.raises(ValueError, match='--config.batch_size=8'):
    train.validate_config(runlocal)
  runlocal.batch_size = 8
  train.validate_config(runlocal)


def test_schedule_halves_the_rate_at_the_decay_steps():
  config = _get_config()
  config.optimizer.decay_steps = (2, 4)
  optimizer = train.make_optimizer(config)
  params = {'w': jnp.zeros(())}
  state = optimizer.init(params)
  sizes = []
  for _ in range(6):  # A constant gradient: Adam's step is the rate itself.
    updates, state = optimizer.update({'w': jnp.ones(())}, state, params)
    sizes.append(-float(updates['w']))
  np.testing.assert_allclose(sizes, [1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 2.5e-5],
                             rtol=1e-3)


@functools.lru_cache(maxsize=None)
def _model_and_params():
  config = tiny_config()
  model = recnet_task.create_model(config)
  params = jax.jit(lambda rng: recnet_task.init_params(model, rng))(
      jax.random.key(1))
  return model, params


def test_loss_fn_equals_recnet_loss():
  model, params = _model_and_params()
  # Every loss option away from its default, so a field that does not reach
  # the loss changes the value.
  overrides = {'pixel_loss': 'mse', 'paper_mask_sign': True,
               'ssim_weight': 0.2, 'mask_weight': 0.5, 'color_weight': 2.0,
               'ecr_weight': 0.3, 'ecr_pool': 2}
  config = tiny_config()
  config.loss.update(overrides)
  assert recnet_task.loss_config(config) == recnet_loss.RECNetLossConfig(
      **overrides)
  batch = {k: pixels.to_float(jnp.asarray(v))
           for k, v in _random_batch(2, 32, seed=3).items()}

  @jax.jit
  def losses(params, batch, vgg):
    loss, metrics = train.loss_and_metrics(
        model, params, batch, config, {'task': vgg, 'regulariser': None})
    out = model.apply({'params': params}, batch['input'])
    want = recnet_loss.recnet_loss(
        out.output, batch['target'], batch['input'], out.mask, vgg,
        recnet_loss.RECNetLossConfig(**overrides))
    default = recnet_loss.recnet_loss(out.output, batch['target'],
                                      batch['input'], out.mask, vgg)[0]
    return loss, metrics, want, default

  loss, metrics, (want, terms), default = losses(params, batch, _vgg())
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
  assert float(metrics['loss']) == float(loss)
  for name, value in terms.items():
    np.testing.assert_allclose(float(metrics[name]), float(value), rtol=1e-6)
  assert abs(float(default) - float(loss)) > 1e-3


def test_loss_gradient_is_finite_at_black_output_pixels():
  rng = np.random.default_rng(0)
  pred = jnp.asarray(rng.random((1, 32, 32, 3), np.float32)).at[0, 3, 4].set(0)
  target = jnp.asarray(rng.random((1, 32, 32, 3), np.float32))
  # Saturated mask probabilities too: a sigmoid reaches exactly 0 and 1.
  mask = jnp.full((1, 32, 32, 1), 0.5).at[0, 0, 0].set(1.0).at[0, 1, 1].set(0)
  pred_grad, mask_grad = jax.grad(
      lambda p, m: recnet_loss.recnet_loss(
          p, target, target, m, None,
          recnet_loss.RECNetLossConfig(ecr_weight=0.0))[0],
      argnums=(0, 1))(pred, mask)
  assert bool(jnp.all(jnp.isfinite(pred_grad)))
  assert bool(jnp.all(jnp.isfinite(mask_grad)))


def test_load_frozen_is_vgg_only_with_ecr():
  config = tiny_config()
  assert sorted(recnet_task.load_frozen(config)) == [
      f'Conv_{i}' for i in range(10)]
  config.loss.ecr_weight = 0.0
  assert recnet_task.load_frozen(config) is None


@pytest.mark.parametrize('field,value,message', [
    ('eval.protocols', ('recnet', 'uec256'), 'Unknown eval protocols'),
    ('model_nc', 5, 'divisible by config.model_num_heads'),
    ('loss.pixel_loss', 'l2', 'pixel_loss must be one of'),
    ('data.crop_size', 24, 'too small for the ECR term'),
])
def test_bad_config_values_are_named(field, value, message):
  config = tiny_config()
  parent, _, name = field.rpartition('.')
  setattr(config[parent] if parent else config, name, value)
  with pytest.raises(ValueError, match=message):
    train.validate_config(config)


def test_sharded_step_equals_single_device_step():
  assert jax.device_count() == 8  # tests/conftest.py simulates 8 devices.
  config = tiny_config()
  # Without the ECR term: VGG16's gradient would double the compile time, and
  # the frozen params' placement is exercised by the training-run test.
  config.loss.ecr_weight = 0.0
  model, params = _model_and_params()
  # SGD keeps the update linear in the gradient, so the comparison measures
  # the sharded computation itself; Adam's g / sqrt(v) would amplify float32
  # rounding of near-zero gradient entries up to the learning rate.
  optimizer = optax.sgd(0.1)
  batch = _random_batch()
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = train.make_mesh(devices)
    replicated = jax.sharding.NamedSharding(mesh, train.P())
    # A copy: the step donates (frees) the state it is given.
    start = jax.tree.map(lambda x: x.copy(), params)
    state = jax.device_put(train.TrainState(
        step=jnp.zeros((), jnp.int32), params=start,
        opt_state=optimizer.init(start)), replicated)
    step_fn = train.make_train_step(model, config, optimizer, mesh,
                                    frozen=train.load_frozen(config))
    global_batch = train.make_global_batch(batch, mesh)
    assert len(global_batch['input'].sharding.device_set) == len(devices)
    for _ in range(3):
      state, metrics = step_fn(state, global_batch)
    assert bool(metrics['finite'])
    assert state.params['extract']['kernel'].sharding.is_fully_replicated
    results.append((jax.device_get(state.params), float(metrics['loss'])))
  (single, loss_single), (sharded, loss_sharded) = results
  # Per-sample computations are the same; only the order of the cross-device
  # gradient sum differs, so the results agree to float32 rounding.
  assert loss_sharded == pytest.approx(loss_single, rel=1e-5)
  for x, y in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  # ...and training moved the parameters well beyond that tolerance.
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(jax.device_get(params)), jax.tree.leaves(single)))
  assert moved > 1e-3


def test_eval_pair_protocols():
  model, params = _model_and_params()
  rng = np.random.default_rng(0)
  pair = input_pipeline.EvalPair(
      name='x_N1', ev_tag='N1',
      input=rng.integers(0, 256, (30, 41, 3), dtype=np.uint8),
      target=rng.integers(0, 256, (30, 41, 3), dtype=np.uint8))
  correct_pair = evaluation.pair_corrector(recnet_task.TASK, model, params)
  image_in, output, target = correct_pair(pair,
                                         recnet_task.RECNET_PROTOCOL)[:3]
  assert image_in.dtype == output.dtype == target.dtype == np.uint8
  # RECNet's test loader resizes both up to a multiple of 4 per side.
  resized_input = protocols.resize_to_multiple(pair.input)
  assert image_in.shape == output.shape == target.shape == (32, 44, 3)
  np.testing.assert_array_equal(image_in, pixels.to_uint8(resized_input))
  np.testing.assert_array_equal(
      target, pixels.to_uint8(protocols.resize_to_multiple(pair.target)))
  want = jax.jit(lambda p, x: model.apply({'params': p}, x).output)(
      params, resized_input[None])[0]
  np.testing.assert_array_equal(output, np.round(np.asarray(want) * 255))

  image_in, output, target = correct_pair(pair, protocols.ENC_FECNET)[:3]
  assert image_in.shape == output.shape == target.shape == (32, 44, 3)
  np.testing.assert_array_equal(
      image_in, pixels.to_uint8(protocols.resize_to_multiple(pair.input)))
  np.testing.assert_array_equal(
      target, pixels.to_uint8(protocols.resize_to_multiple(pair.target)))
  with pytest.raises(ValueError, match='Unknown eval protocols'):
    protocols.resolve(recnet_task.TASK, ['uec256'])


def _params(workdir):
  params, _, step = checkpointing.load_params(workdir)
  return params, step


@pytest.fixture
def one_compilation_per_config(monkeypatch):
  """Lets the runs of a test share their compiled init and train step.

  XLA:CPU takes tens of seconds to compile RECNet's init and train step, and
  every `train_and_evaluate` builds (and jits) them anew. The runs of one
  test use one model, loss and optimiser config, so their steps are the same
  pure function of (state, batch): build each once. The cached initial state
  is copied, since the step donates (frees) the state it is given.
  """
  real_make_train_step, real_init_state = (train.make_train_step,
                                           train.init_state)
  steps, states = {}, {}

  def key(model, config, mesh):
    return (model, config.loss.to_json(), config.optimizer.to_json(),
            config.seed, mesh)

  def make_train_step(model, config, optimizer, mesh, frozen=None):
    k = key(model, config, mesh)
    if k not in steps:
      steps[k] = real_make_train_step(model, config, optimizer, mesh, frozen)
    return steps[k]

  def init_state(model, config, optimizer, mesh):
    k = key(model, config, mesh)
    if k not in states:
      states[k] = real_init_state(model, config, optimizer, mesh)
    return jax.tree.map(lambda x: x.copy(), states[k])

  monkeypatch.setattr(train, 'make_train_step', make_train_step)
  monkeypatch.setattr(train, 'init_state', init_state)


def test_run_writes_both_protocols_and_resumes_after_sigterm(
    sample_data_dir, tmp_path, monkeypatch, one_compilation_per_config):
  del one_compilation_per_config
  # LPIPS-VGG at full resolution costs seconds per image on a CPU; it is
  # tested in tests/test_evaluation.py.
  without_lpips = dataclasses.replace(recnet_task.RECNET_PROTOCOL,
                                      lpips=False)
  monkeypatch.setattr(recnet_task, 'TASK', dataclasses.replace(
      recnet_task.TASK, protocols={'recnet': without_lpips}))
  config = tiny_config(sample_data_dir, num_train_steps=4)
  # VGG16's gradient would add a third to the step's compile time; the ECR
  # term is checked by test_loss_fn_equals_recnet_loss.
  config.loss.ecr_weight = 0.0
  # The first validation pair (coffee-shade_N1.5) only: a full-resolution
  # forward pass costs seconds on a CPU, and tests/test_evaluation.py covers
  # the per-EV and group arithmetic.
  config.eval.max_images = 1
  config.eval.protocols = ('recnet', 'enc_fecnet')
  uninterrupted = tmp_path / 'uninterrupted'
  report = train.train_and_evaluate(config, str(uninterrupted))

  saved = json.loads((uninterrupted / 'eval_step_4.json').read_text())
  assert saved['model'] == 'recnet' and saved['step'] == 4
  assert saved['ssim_variants'] == {
      'recnet': image_quality.SSIM_VARIANTS['rgb'],
      'enc_fecnet': image_quality.SSIM_VARIANTS['gray']}
  results = saved['results']
  assert set(results) == set(report) == {'recnet', 'enc_fecnet'}
  for protocol, result in results.items():
    assert result['ssim_variant'] == saved['ssim_variants'][protocol]
    assert set(result['per_ev']) == {'N1.5'}, protocol
    assert result['under']['count'] == result['all']['count'] == 1
    assert 'over' not in result  # No over-exposed input was evaluated.
    for name in ('psnr', 'ssim', 'identity_psnr', 'identity_ssim'):
      assert np.isfinite(result['all'][name]), (protocol, name)
      assert result['under'][name] == result['per_ev']['N1.5'][name]
  # Same image size (336x504 is a multiple of 4) and PSNR under both
  # protocols; grayscale and RGB SSIM differ.
  assert results['recnet']['all']['psnr'] == pytest.approx(
      results['enc_fecnet']['all']['psnr'])
  assert results['recnet']['all']['ssim'] != results['enc_fecnet']['all']['ssim']
  assert (uninterrupted / 'eval_grid_step_4.png').is_file()

  # Preempted at step 3, then rerun: the params of the uninterrupted run.
  # (Evaluation settings do not affect training.)
  config.eval.protocols = ('recnet',)
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
  monkeypatch.setattr(train, 'make_global_batch', real_make_global_batch)

  train.train_and_evaluate(config, str(preempted))
  final, step = _params(preempted)
  expected, expected_step = _params(uninterrupted)
  assert step == expected_step == 4
  leaves_a, tree_a = jax.tree.flatten(final)
  leaves_b, tree_b = jax.tree.flatten(expected)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Training moved the params: the comparison is not of two initial states.
  start = jax.device_get(train.init_state(
      recnet_task.create_model(config), config, train.make_optimizer(config),
      train.make_mesh()).params)
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(start), leaves_a))
