"""ERL: the batch-correlation module (models/erl.py) and its pretext stages.

Everything runs at toy sizes: C = 2 channels, 4x4 tokens (C' = 32), images
of 8-17 pixels. tests/conftest.py simulates 8 CPU devices for the
data-parallel tests.
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import checkpoint_writer  # tests/ is on sys.path.

from data_prep import image_codec
from expcorr_jax import checkpointing
from expcorr_jax import config_args
from expcorr_jax import evaluation
from expcorr_jax import input_pipeline
from expcorr_jax import train
from expcorr_jax.models import erl
from expcorr_jax.tasks import erl_autoencoder as autoencoder_task
from expcorr_jax.tasks import erl_bcm as bcm_task
from expcorr_jax.tasks import erl_pretext

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
P = jax.sharding.PartitionSpec
TINY = dict(features=2, encoder_layers=2, decoder_layers=2, token_size=4,
            num_heads=2)


def _config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  config = config_args.load_config(REPO_ROOT / 'configs' / f'{name}.py', arg)
  for key, value in TINY.items():
    if key in config.erl:
      config.erl[key] = value
  return config


def _key(seed: int) -> jax.Array:
  # RBG keys: threefry's kernels take seconds to compile on a CPU.
  return jax.random.key(seed, impl='rbg')


@pytest.fixture(scope='module')
def bcm():
  """(model, params of all four groups), initialised once."""
  model = erl.BCM(**TINY)
  params = jax.jit(model.init)(_key(0), jnp.zeros((1, 8, 8, 3)))['params']
  return model, params


def _images(batch: int, height: int = 8, width: int = 8,
            seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.random((batch, height, width, 3), dtype=np.float32)


# Jitted once per shape, shared by the tests.
_features = jax.jit(erl.relationship_features, static_argnames=('mode',))
_reconstruct = jax.jit(erl.bcm_reconstruct, static_argnums=0,
                       static_argnames=('mode',))
_regulariser = jax.jit(erl.regulariser, static_argnames=('mode',))


def _sub_dict(params, *keys):
  return {k: params[k] for k in keys}


def test_permuting_the_batch_permutes_the_outputs(bcm):
  model, params = bcm
  images = _images(5)
  permutation = np.array([3, 0, 4, 1, 2])
  features = _features(params, images)
  assert features.shape == (5, model.token_dim) == (5, 32)
  np.testing.assert_allclose(_features(params, images[permutation]),
                             features[permutation], atol=1e-5)
  np.testing.assert_allclose(_reconstruct(model, params, images[permutation]),
                             _reconstruct(model, params, images)[permutation],
                             atol=1e-5)
  assert float(jnp.min(jnp.std(features, axis=0))) > 1e-3  # Not constant.


def test_each_sample_attends_to_the_others_and_batch_of_one_works(bcm):
  model, params = bcm
  images = _images(5)
  changed = images.copy()
  changed[2] = 1.0 - changed[2]
  before = _features(params, images)
  after = _features(params, changed)
  for i in (0, 1, 3, 4):
    assert float(jnp.max(jnp.abs(after[i] - before[i]))) > 1e-3
  # The coupling is t_e's alone: f_e works per image.
  encode = jax.jit(lambda x: model.apply({'params': params}, x,
                                         method=erl.BCM.encode))
  np.testing.assert_array_equal(encode(changed)[0], encode(images)[0])

  alone = _features(params, images[:1])
  assert alone.shape == (1, 32) and bool(jnp.all(jnp.isfinite(alone)))
  assert float(jnp.max(jnp.abs(alone[0] - before[0]))) > 1e-3
  assert _reconstruct(model, params, images[:1]).shape == (1, 8, 8, 3)


def test_model_is_read_off_its_params(bcm):
  model, params = bcm
  assert erl.model_from_params(params) == model
  other = erl.BCM(features=3, encoder_layers=4, decoder_layers=1,
                  token_size=2, transformer_layers=2, num_heads=3, mlp_dim=5)
  shapes = jax.eval_shape(other.init, _key(0), jnp.zeros((1, 4, 4, 3)))
  assert erl.model_from_params(shapes['params']) == other
  stage3 = _sub_dict(shapes['params'], 'encoder', 'transformer')
  assert erl.model_from_params(stage3) == other.clone(decoder_layers=3)


def test_fusion_starts_as_configured(bcm):
  """'features_only' starts from stage 1's reconstruction; the default,
  'features_and_relationship', makes I' depend on the other images of the
  batch from the first step."""
  model, params = bcm
  images = _images(5)
  stage1 = jax.jit(lambda x: model.apply({'params': params}, x,
                                         method=erl.BCM.reconstruct))
  plain = model.clone(fusion_init='features_only')
  plain_params = {**params, 'fusion': jax.jit(plain.init)(
      _key(0), jnp.zeros((1, 8, 8, 3)))['params']['fusion']}
  np.testing.assert_allclose(_reconstruct(plain, plain_params, images),
                             stage1(images), atol=1e-6)
  assert model.fusion_init == 'features_and_relationship'
  changed = images.copy()
  changed[2] = 1.0 - changed[2]
  before = _reconstruct(model, params, images)
  after = _reconstruct(model, params, changed)
  assert float(jnp.max(jnp.abs(after[0] - before[0]))) > 1e-4
  assert float(jnp.max(jnp.abs(before - stage1(images)))) > 1e-4


def test_phase_loss_equals_numpy_fft_per_channel():
  # Odd sizes: no real Nyquist bin whose phase sign rounding could flip.
  a = _images(2, 15, 17, seed=1)
  b = _images(2, 15, 17, seed=2)
  angle = lambda x: np.angle(np.fft.fft2(x.astype(np.float64), axes=(1, 2)))
  expected = np.mean(np.abs(angle(a) - angle(b)))
  phase_loss = jax.jit(erl.phase_loss)
  assert float(phase_loss(a, b)) == pytest.approx(expected, rel=1e-5)
  # Exposure-like changes (gain, offset) leave the phase alone; moving the
  # content does not.
  assert float(phase_loss(a, 0.4 * a + 0.1)) < 1e-4
  assert float(phase_loss(a, a[:, :, ::-1])) > 0.5
  # Bins of zero magnitude (a flat image has nothing but DC) have phase 0
  # and a finite gradient.
  flat = jnp.full((1, 8, 8, 3), 0.5)
  grad = jax.grad(lambda y: erl.phase_loss(flat, y))(flat)
  assert bool(jnp.all(jnp.isfinite(grad)))


def test_regulariser_gradient_reaches_the_output_only(bcm):
  params = _sub_dict(bcm[1], 'encoder', 'transformer')  # As load_bcm gives.
  output, target = _images(4, seed=3), _images(4, seed=4)
  value = _regulariser(params, output, target)
  expected = jnp.mean(jnp.abs(_features(params, output) -
                              _features(params, target)))
  assert float(value) == pytest.approx(float(expected), rel=1e-6)
  assert float(_regulariser(params, target, target)) == 0.0

  g_params, g_output, g_target = jax.jit(jax.grad(
      lambda p, o, t: erl.regulariser(p, o, t),
      argnums=(0, 1, 2)))(params, output, target)
  assert all(not np.any(leaf) for leaf in jax.tree.leaves(g_params))
  assert not np.any(g_target)
  # Every output image gets a gradient.
  assert float(jnp.min(jnp.max(jnp.abs(g_output), axis=(1, 2, 3)))) > 0


def _sharded(images: np.ndarray, mesh) -> jax.Array:
  return jax.device_put(images, jax.sharding.NamedSharding(mesh, P('data')))


def test_global_attention_on_8_devices_equals_one_device(bcm):
  assert jax.device_count() == 8  # tests/conftest.py simulates 8 devices.
  _, params = bcm
  images = _images(16)
  single = _features(params, images)  # On no mesh: one device.
  got = _features(params, _sharded(images, train.make_mesh()))
  assert len(got.sharding.device_set) == 8
  np.testing.assert_allclose(got, single, atol=1e-5)


def test_per_device_attention_equals_each_sub_batch_alone(bcm):
  _, params = bcm
  images = _images(16)
  mesh = train.make_mesh()
  expected = np.concatenate([_features(params, images[i:i + 2])
                             for i in range(0, 16, 2)])
  # The mesh comes from the batch's sharding or from the context.
  per_device = functools.partial(_features, mode='per_device')
  np.testing.assert_allclose(per_device(params, _sharded(images, mesh)),
                             expected, atol=1e-5)
  with jax.set_mesh(mesh):
    np.testing.assert_allclose(jax.jit(functools.partial(
        erl.relationship_features, mode='per_device'))(params, images),
                               expected, atol=1e-5)
  whole = _features(params, images)
  assert float(jnp.max(jnp.abs(whole - expected))) > 1e-3  # Modes differ.
  # Gradients pass through the shard_map to the output.
  sharded = _sharded(images, mesh)
  grad = jax.jit(jax.grad(lambda o: erl.regulariser(
      params, o, sharded, mode='per_device')))(sharded[::-1])
  assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.max(grad)) > 0


def test_per_sample_attention_is_each_sample_alone_and_mixes_nothing(bcm):
  """The ERL control arm: the same t_e, no relationship between samples."""
  _, params = bcm
  images = _images(6)
  per_sample = _features(params, images, mode='per_sample')
  alone = np.concatenate([_features(params, images[i:i + 1])
                          for i in range(6)])
  np.testing.assert_allclose(per_sample, alone, atol=1e-5)
  assert float(jnp.max(jnp.abs(_features(params, images) - alone))) > 1e-3
  # The cross-sample measure: 0 without a relationship, > 0 with one.
  shift = lambda mode: float(erl.cross_sample_shift(
      functools.partial(_features, params, mode=mode), jnp.asarray(images)))
  assert shift('per_sample') == 0.0
  assert shift('global') > 1e-3


def test_stage2_per_device_train_step_on_8_devices():
  """The real sharded step finds the mesh: its loss is the mean over the
  sub-batches attended to alone (not the whole batch's)."""
  config, model, frozen, start = _stage2_setup()
  config.erl.batch_attention = 'per_device'
  # The fusion's F' half made random, so that t_e, and so the mode, matters
  # from the first step.
  assert set(start) == {'transformer', 'fusion'}
  kernel = start['fusion']['kernel']
  kernel[:, :, model.features:] = np.random.default_rng(1).normal(
      size=kernel[:, :, model.features:].shape)
  batch = {'image': np.round(_images(16) * 255).astype(np.uint8)}
  images = batch['image'].astype(np.float32) / 255
  # Unsharded, on one device, where both modes attend over what they get.
  loss = jax.jit(lambda x: bcm_task.loss_fn(model, start, {'image': x}, config,
                                            frozen).loss)
  per_sub_batch = np.mean([loss(images[i:i + 2]) for i in range(0, 16, 2)])
  whole_batch = float(loss(images))
  assert abs(per_sub_batch - whole_batch) > 1e-4

  params, metrics = _train_steps(config, model, frozen, start, steps=1,
                                 optimizer=optax.sgd(0.1), batch=batch)
  assert float(metrics['loss']) == pytest.approx(float(per_sub_batch),
                                                 rel=1e-5)
  assert _max_change(params['transformer'], start['transformer']) > 1e-6


def test_normal_exposure_sampler_takes_ev0_frames_and_pair_targets():
  frames = [image_codec.encode_png(np.full((10, 12, 3), 40 * i, np.uint8))
            for i in range(3)]
  sampler = erl_pretext.NormalExposureSample(crop_size=8, flip=True)
  rng = np.random.default_rng(0)
  scene = {'scene': b's', 'frames': frames, 'evs': np.float32([-1, 0, 1])}
  image = sampler.random_map(scene, rng)['image']
  assert image.shape == (8, 8, 3) and np.all(image == 40)
  pair = {'input': frames[0], 'target': frames[2]}
  assert np.all(sampler.random_map(pair, rng)['image'] == 80)
  with pytest.raises(ValueError, match='no frame at EV 0.5'):
    erl_pretext.NormalExposureSample(8, False, 0.5).random_map(scene, rng)


def test_stage2_names_a_missing_or_wrong_stage1_checkpoint(
    tmp_path, bcm):
  config = _config('erl_bcm')
  with pytest.raises(ValueError, match='autoencoder_workdir'):
    bcm_task.validate_config(config)

  missing = tmp_path / 'no_such_run'
  config.erl.autoencoder_workdir = str(missing)
  with pytest.raises(FileNotFoundError) as error:
    bcm_task.validate_config(config)
  assert str(missing) in str(error.value)
  assert ('--config=configs/erl_autoencoder.py --workdir=' + str(missing)
          in str(error.value))
  with pytest.raises(FileNotFoundError, match='no_such_run'):
    bcm_task.load_frozen(config)

  _, params = bcm
  wrong = tmp_path / 'uec_run'
  checkpoint_writer.write_params_checkpoint(wrong, params, {'model': 'uec'})
  config.erl.autoencoder_workdir = str(wrong)
  with pytest.raises(ValueError, match=r"uec_run holds a 'uec' checkpoint.*"
                     r"\n.*configs/erl_autoencoder.py"):
    bcm_task.load_frozen(config)

  narrow = tmp_path / 'narrow_run'
  stage1 = _config('erl_autoencoder')
  checkpoint_writer.write_params_checkpoint(
      narrow, _sub_dict(params, 'encoder', 'decoder'), stage1.to_dict())
  config.erl.autoencoder_workdir = str(narrow)
  config.erl.features = 3
  with pytest.raises(ValueError, match=r'erl.features=\(2, 3\)'):
    bcm_task.validate_config(config)
  config.erl.features = 2
  bcm_task.validate_config(config)
  assert set(bcm_task.load_frozen(config)) == {'encoder', 'decoder'}

  with pytest.raises(ValueError, match="'erl_autoencoder' checkpoint, not an "
                     'ERL stage-2 BCM'):
    erl_pretext.load_bcm(str(narrow))
  with pytest.raises(FileNotFoundError, match='configs/erl_bcm.py'):
    erl_pretext.load_bcm(str(missing))


def test_reconstruction_eval_and_stage1_loss(bcm):
  model, params = bcm
  stage1 = _sub_dict(params, 'encoder', 'decoder')
  stage2 = _sub_dict(params, 'transformer', 'fusion')
  rng = np.random.default_rng(2)
  pair = input_pipeline.EvalPair(
      name='x_N1', ev_tag='N1',
      input=rng.integers(0, 256, (9, 11, 3), dtype=np.uint8),
      target=rng.integers(0, 256, (9, 11, 3), dtype=np.uint8))
  target = pair.target.astype(np.float32)[None] / 255
  ae = jax.jit(lambda x: model.apply({'params': stage1}, x,
                                     method=erl.BCM.reconstruct))

  reconstruction = erl_pretext.RECONSTRUCTION
  image_in, output, scored = evaluation.pair_corrector(
      autoencoder_task.TASK, model, stage1)(pair, reconstruction)[:3]
  np.testing.assert_array_equal(image_in, pair.input)
  np.testing.assert_array_equal(scored, pair.target)
  expected = np.round(np.clip(ae(target)[0], 0, 1) * 255)
  assert np.max(np.abs(output.astype(float) - expected)) <= 1
  output = evaluation.pair_corrector(
      bcm_task.TASK, model,
      bcm_task.TASK.correction_params(stage2, stage1))(
          pair, reconstruction).output
  expected = np.round(np.clip(_reconstruct(model, params, target)[0], 0, 1)
                      * 255)
  assert np.max(np.abs(output.astype(float) - expected)) <= 1

  config = _config('erl_autoencoder')
  loss, metrics = jax.jit(lambda x: tuple(autoencoder_task.loss_fn(
      model, stage1, {'image': x}, config))[:2])(target)
  assert float(loss) == pytest.approx(
      float(jnp.mean(jnp.abs(ae(target) - target))), rel=1e-6)
  assert float(metrics['l1']) == float(loss)


def test_stage2_trains_evaluates_and_loads_for_stage3(sample_data_dir,
                                                      tmp_path, bcm):
  _, params = bcm
  stage1 = tmp_path / 'stage1'
  checkpoint_writer.write_params_checkpoint(
      stage1, _sub_dict(params, 'encoder', 'decoder'),
      _config('erl_autoencoder').to_dict())
  config = _config('erl_bcm', 'runlocal')
  config.erl.autoencoder_workdir = str(stage1)
  config.data.data_dir = sample_data_dir
  config.data.crop_size = 16
  config.batch_size = 8
  config.num_train_steps = 2
  config.log_every_steps = config.checkpoint_every_steps = 2
  config.eval.max_images = 1
  config.eval.num_grid_images = 1
  stage2 = tmp_path / 'stage2'
  report = train.train_and_evaluate(config, str(stage2))
  assert report['reconstruction']['all']['count'] == 1
  saved = json.loads((stage2 / 'eval_step_2.json').read_text())
  assert saved['model'] == 'erl_bcm'

  loaded = erl_pretext.load_bcm(str(stage2))
  assert set(loaded) == {'encoder', 'transformer'}
  for a, b in zip(jax.tree.leaves(loaded['encoder']),
                  jax.tree.leaves(params['encoder'])):
    np.testing.assert_array_equal(a, b)
  trained, _, _ = checkpointing.load_params(str(stage2))
  for a, b in zip(jax.tree.leaves(loaded['transformer']),
                  jax.tree.leaves(trained['transformer'])):
    np.testing.assert_array_equal(a, b)
  value = _regulariser(loaded, _images(2, seed=1), _images(2))
  assert float(value) > 0


def _stage2_setup(pretext='phase', trains='transformer'):
  """(config, model, frozen stage 1, host copies of fresh stage-2 params:
  the step donates its state)."""
  config = _config('erl_bcm')
  config.loss.pretext = pretext
  config.erl.stage2_trains = trains
  model = bcm_task.TASK.create_model(config)
  frozen = jax.jit(functools.partial(model.init, method=erl.BCM.reconstruct))(
      _key(5), jnp.zeros((1, 8, 8, 3)))['params']
  start = jax.tree.map(np.array, jax.jit(functools.partial(
      bcm_task.init_params, model))(_key(6)))
  return config, model, frozen, start


def _train_steps(config, model, frozen, start, steps=3, optimizer=None,
                 batch=None):
  """`steps` real sharded train steps from `start`: (params, last metrics)."""
  optimizer = optimizer or optax.adam(1e-2)
  if batch is None:
    batch = {'image': np.round(_images(8) * 255).astype(np.uint8)}
  mesh = train.make_mesh()
  state = jax.device_put(
      train.TrainState(step=jnp.zeros((), jnp.int32), params=start,
                       opt_state=optimizer.init(start)),
      jax.sharding.NamedSharding(mesh, P()))
  step = train.make_train_step(model, config, optimizer, mesh,
                               {'task': frozen, 'regulariser': None})
  for _ in range(steps):
    state, metrics = step(state, train.make_global_batch(batch, mesh))
  return jax.device_get(state.params), jax.device_get(metrics)


def _max_change(a, b):
  return max(float(np.max(np.abs(x - y)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_default_stage2_trains_t_e_only_and_links_the_batch():
  config, model, frozen, start = _stage2_setup()
  assert (config.erl.stage2_trains, config.erl.fusion_init) == (
      'transformer', 'features_and_relationship')
  params, metrics = _train_steps(config, model, frozen, start)
  assert _max_change(params['transformer'], start['transformer']) > 1e-4
  assert _max_change(params['fusion'], start['fusion']) == 0.0  # W frozen.
  assert float(metrics['fprime_dependence']) > 1e-4
  assert float(metrics['fprime_batch_std']) > 1e-4
  # The logged cross-sample measure: the other images' I' move when image 0
  # of the batch is replaced (t_e relates the samples from the start).
  assert float(metrics['cross_sample']) > 1e-5
  assert float(metrics['fusion_fprime_norm']) == pytest.approx(
      np.sqrt(model.features), rel=1e-6)  # The identity's norm.
  # After training, I' of one image depends on another image of the batch.
  images = _images(5)
  changed = images.copy()
  changed[3] = 1.0 - changed[3]
  all_params = {**frozen, **params}
  before = _reconstruct(model, all_params, images)
  after = _reconstruct(model, all_params, changed)
  assert float(jnp.max(jnp.abs(after[0] - before[0]))) > 1e-4


@pytest.mark.parametrize('pretext', ['phase', 'l1', 'none'])
def test_table2_arms_run_and_no_pretext_leaves_t_e_at_its_start(pretext):
  config, model, frozen, start = _stage2_setup(pretext)
  params, metrics = _train_steps(config, model, frozen, start, steps=2)
  assert np.isfinite(float(metrics['loss']))
  changed = _max_change(params['transformer'], start['transformer'])
  if pretext == 'none':
    assert changed == 0.0 and float(metrics['loss']) == 0.0
  else:
    assert changed > 1e-4


def test_the_project_variant_trains_w_too():
  config, model, frozen, start = _stage2_setup(trains='transformer_and_fusion')
  params, _ = _train_steps(config, model, frozen, start, steps=2)
  assert _max_change(params['fusion'], start['fusion']) > 1e-4


def test_a_frozen_w_that_ignores_f_prime_is_refused(tmp_path):
  """t_e would get no gradient: refused before anything is loaded."""
  config = _config('erl_bcm')
  config.erl.autoencoder_workdir = str(tmp_path / 'unused')
  config.erl.fusion_init = 'features_only'
  with pytest.raises(ValueError, match="t_e would get no gradient"):
    bcm_task.validate_config(config)
