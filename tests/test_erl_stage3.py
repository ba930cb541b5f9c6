"""ERL stage 3: the regulariser switched on from a corrector's config.

A toy BCM (C = 2 channels, 4x4 tokens) is written as stage-1 and stage-2
checkpoints; UEC and RECNet use it through the `erl` config argument, which
adds `config.regulariser` (tasks/erl.py), applied by the trainer.
"""

import functools
import pathlib
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import checkpoint_writer  # tests/ is on sys.path.

from data_prep import build
from expcorr_jax import checkpointing
from expcorr_jax import config_args
from expcorr_jax import inference
from expcorr_jax import input_pipeline
from expcorr_jax import tasks
from expcorr_jax import train
from expcorr_jax.models import erl
from expcorr_jax.models import uec as uec_model
from expcorr_jax.tasks import recnet as recnet_task
from expcorr_jax.tasks import uec as uec_task

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(features=2, encoder_layers=2, decoder_layers=2, token_size=4,
            num_heads=2)


def _config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  return config_args.load_config(REPO_ROOT / 'configs' / f'{name}.py', arg)


def _stage_config(name: str, **fields) -> dict:
  config = _config(name)
  for key, value in {**TINY, **fields}.items():
    if key in config.erl:
      config.erl[key] = value
  return config.to_dict()


@pytest.fixture(scope='module')
def bcm_workdir(tmp_path_factory):
  """A stage-2 workdir (and its stage 1) holding a toy BCM with a t_e whose
  output depends on its input."""
  root = tmp_path_factory.mktemp('erl')
  model = erl.BCM(**TINY)
  params = jax.jit(model.init)(jax.random.key(0, impl='rbg'),
                               jnp.zeros((1, 8, 8, 3)))['params']
  params = jax.tree.map(np.asarray, params)
  stage1, stage2 = root / 'stage1', root / 'stage2'
  checkpoint_writer.write_params_checkpoint(
      stage1, {k: params[k] for k in ('encoder', 'decoder')},
      _stage_config('erl_autoencoder'))
  checkpoint_writer.write_params_checkpoint(
      stage2, {k: params[k] for k in ('transformer', 'fusion')},
      _stage_config('erl_bcm', autoencoder_workdir=str(stage1)))
  return stage2


def _uec_config(bcm_workdir, data_dir=None) -> ml_collections.ConfigDict:
  config = _config('uec', 'runlocal,erl')
  config.regulariser.bcm_workdir = str(bcm_workdir)
  config.data.data_dir = data_dir
  config.data.crop_size = 32
  config.model_encoder_height = 32
  config.batch_size = 8  # tests/conftest.py simulates 8 devices.
  return config


def _batch(keys, batch=4, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.random((batch, size, size, 3), np.float32))
          for k in keys}


def test_the_uec_sampler_adds_the_ev0_frame_only_for_erl(sample_data_dir):
  source = build.data_source('multi_exposure/sample', 'train', sample_data_dir)
  indexed = uec_task.IndexedSource(source)
  plain = uec_task.UECSample(indexed, 32, True)
  with_normal = uec_task.UECSample(indexed, 32, True, with_normal=True)
  for index in range(3):
    a = plain.random_map((index, source[index]), np.random.default_rng(index))
    b = with_normal.random_map((index, source[index]),
                               np.random.default_rng(index))
    for key, value in a.items():  # The same draws as without ERL.
      np.testing.assert_array_equal(b[key], value)
    assert float(b['normal_ev']) == 0.0
    # The scene's EV 0 frame, cropped and flipped with the input: where the
    # input happens to be the EV 0 frame, they are equal.
    assert b['normal'].shape == b['input'].shape
    if float(b['input_ev']) == 0.0:
      np.testing.assert_array_equal(b['normal'], b['input'])
  # Uncropped and unflipped it is exactly the stored EV 0 frame.
  whole = uec_task.UECSample(indexed, None, False, with_normal=True)
  record = source[0]
  zero = list(np.asarray(record['evs'])).index(0.0)
  np.testing.assert_array_equal(
      whole.random_map((0, record), np.random.default_rng(0))['normal'],
      input_pipeline.decode(record['frames'][zero]))
  config = _config('uec', 'runlocal,erl')
  assert config.regulariser is not None  # make_train_loader asks for it.


def test_configs_default_off_and_the_erl_argument_switches_it_on():
  for name in ('uec', 'recnet'):
    base, on = _config(name, 'runlocal'), _config(name, 'runlocal,erl')
    assert base.regulariser is None and on.regulariser.name == 'erl'
    assert (on.regulariser.weight == 0.1 and
            on.regulariser.batch_attention == 'global')
    assert on.regulariser.bcm_workdir is None
    # Nothing but the switch differs.
    on = on.to_dict()
    on['regulariser'] = None
    assert on == base.to_dict()
    assert _config(name, 'erl').to_dict()['regulariser'] == (
        _config(name, 'runlocal,erl').to_dict()['regulariser'])
  assert train.load_frozen(_config('uec')) == {'task': None,
                                                'regulariser': None}
  with pytest.raises(ValueError, match="Unknown config argument 'erll'"):
    _config('uec', 'runlocal,erll')


def test_uec_regulariser_reaches_the_corrector_and_never_the_bcm(
    bcm_workdir):
  config = _uec_config(bcm_workdir)
  train.validate_config(config)
  frozen = train.load_frozen(config)
  assert frozen['task'] is None and set(frozen['regulariser']) == {
      'encoder', 'transformer'}
  # Only the regulariser: its gradient alone must reach the corrector. One
  # pass (three by default) keeps the compile short.
  config.loss.restoration_weight = config.loss.monotonicity_weight = 0.0
  config.loss.num_passes = 1
  model = uec_task.create_model(config)
  params = uec_task.init_params(model, jax.random.key(1, impl='rbg'))
  batch = _batch(('input', 'target', 'ref_lo', 'ref_hi', 'normal'))

  @jax.jit
  def run(params, frozen):
    # The trainer's loss, and which images the task hands the regulariser.
    compared = uec_task.loss_fn(model, params, batch, config,
                                needs=tasks.get_regulariser('erl').needs)
    return jax.value_and_grad(
        lambda p, f: train.loss_and_metrics(model, p, batch, config, f),
        argnums=(0, 1), has_aux=True)(params, frozen), (compared.output,
                                                       compared.target)

  ((loss, metrics), (g_params, g_frozen)), (output, target) = run(params,
                                                                  frozen)
  assert float(metrics['erl']) > 0 and float(metrics['loss']) == float(loss)
  assert float(loss) == pytest.approx(0.1 * float(metrics['erl']), rel=1e-5)
  # As the paper compares an output with its normal-exposure ground truth:
  # the input corrected towards its scene's EV 0 frame, and that frame (not
  # the restoration target, a frame of random EV).
  np.testing.assert_array_equal(target, batch['normal'])
  towards_normal = jax.jit(lambda p: model.apply(
      {'params': p}, batch['input'], batch['normal'], config.loss.num_passes,
      method=uec_model.UEC.multi_pass))(params)
  np.testing.assert_allclose(output, towards_normal, atol=1e-6)
  assert float(metrics['erl']) == pytest.approx(float(jax.jit(
      erl.regulariser)(frozen['regulariser'], output, target)), rel=1e-5)
  # Logged beside it: how much the other outputs' F' move when output 0 is
  # replaced (the batch relationship at work).
  assert float(metrics['erl_cross_sample']) == pytest.approx(float(jax.jit(
      lambda o: erl.cross_sample_shift(functools.partial(
          erl.relationship_features, frozen['regulariser']), o))(output)),
                                                             rel=1e-5)
  assert float(metrics['erl_cross_sample']) > 0
  assert all(not np.any(leaf) for leaf in jax.tree.leaves(g_frozen))
  # It reaches the corrector h and the difference predictor.
  largest = jax.tree.map(lambda g: float(jnp.max(jnp.abs(g))), g_params)
  assert min(jax.tree.leaves(largest['corrector'])) > 0
  assert max(jax.tree.leaves(largest['predictor'])) > 0


def test_the_cross_sample_diagnostic_runs_only_at_log_steps(bcm_workdir):
  """Off log steps the regulariser's diagnostic is NaN (not computed: its
  extra passes serve only the log) and the loss and gradients are the
  same; the trainer's means leave the NaNs out."""
  config = _uec_config(bcm_workdir)
  config.loss.num_passes = 1
  frozen = train.load_frozen(config)
  model = uec_task.create_model(config)
  params = uec_task.init_params(model, jax.random.key(1, impl='rbg'))
  batch = _batch(('input', 'target', 'ref_lo', 'ref_hi', 'normal'))
  run = jax.jit(lambda p, log: jax.value_and_grad(
      lambda q: train.loss_and_metrics(model, q, batch, config, frozen, log),
      has_aux=True)(p))
  (loss_on, logged), grads_on = run(params, True)
  (loss_off, skipped), grads_off = run(params, False)
  assert np.isfinite(float(logged['erl_cross_sample']))
  assert np.isnan(float(skipped['erl_cross_sample']))
  assert float(loss_on) == float(loss_off)
  assert float(logged['erl']) == float(skipped['erl'])
  for on, off in zip(jax.tree.leaves(grads_on), jax.tree.leaves(grads_off)):
    np.testing.assert_array_equal(on, off)

  class Writer:
    scalars = {}

    def write_scalars(self, step, scalars):
      self.scalars[step] = scalars

  writer = Writer()
  pending = [(1, skipped), (2, logged)]
  train._log_metrics(writer, 2, pending, 2, 1.0, 8)  # pylint: disable=protected-access
  assert writer.scalars[2]['train/erl_cross_sample'] == pytest.approx(
      float(logged['erl_cross_sample']))
  assert writer.scalars[2]['train/erl'] == pytest.approx(float(logged['erl']))


def test_the_control_arm_pulls_alike_with_no_relationship(bcm_workdir):
  """batch_attention='per_sample': the same t_e on each output alone, so
  L_r still pulls each output towards its target, but no output's term
  depends on another output (erl_cross_sample 0)."""
  config = _uec_config(bcm_workdir)
  config.regulariser.batch_attention = 'per_sample'
  train.validate_config(config)
  regulariser = tasks.get_regulariser('erl')
  bcm = regulariser.load_frozen(config.regulariser)
  rng = np.random.default_rng(3)
  output, target = (jnp.asarray(rng.random((4, 16, 16, 3), np.float32))
                    for _ in range(2))
  value = float(jax.jit(functools.partial(regulariser.loss,
                                          config.regulariser))(
                                              bcm, output, target))
  assert value > 0
  logged = jax.jit(functools.partial(regulariser.metrics,
                                     config.regulariser))(bcm, output, target)
  assert float(logged['cross_sample']) == 0.0
  config.regulariser.batch_attention = 'global'
  logged = jax.jit(functools.partial(regulariser.metrics,
                                     config.regulariser))(bcm, output, target)
  assert float(logged['cross_sample']) > 0


class _FakeRECNet:
  """Stands in for RECNet (slow to compile on a CPU): output = x * w."""

  def apply(self, variables, images):
    output = images * variables['params']['w']
    return types.SimpleNamespace(output=output, mask=output[..., :1])


def test_recnet_loss_adds_the_regulariser_on_its_output(bcm_workdir,
                                                        monkeypatch):
  config = _config('recnet', 'runlocal,erl')
  config.batch_size = 8  # tests/conftest.py simulates 8 devices.
  config.regulariser.bcm_workdir = str(bcm_workdir)
  config.loss.ecr_weight = 0.0  # No VGG16: the task's own frozen is None.
  train.validate_config(config)
  frozen = train.load_frozen(config)
  assert frozen['task'] is None and set(frozen['regulariser']) == {
      'encoder', 'transformer'}
  # RECNet's own loss, stubbed: it must get the task's frozen (None).
  def own_loss(pred, target, inputs, mask, vgg, loss_config):
    del inputs, mask, loss_config
    assert vgg is None
    pixel = jnp.mean(jnp.abs(pred - target))
    return pixel, {'pixel': pixel}
  monkeypatch.setattr(recnet_task.recnet_loss, 'recnet_loss', own_loss)
  batch = _batch(('input', 'target'))
  params = {'w': jnp.float32(0.7)}

  @jax.jit
  def run(params, frozen):
    (loss, metrics), grads = jax.value_and_grad(
        lambda p, f: train.loss_and_metrics(_FakeRECNet(), p, batch, config,
                                            f),
        argnums=(0, 1), has_aux=True)(params, frozen)
    regulariser = lambda w: erl.regulariser(
        frozen['regulariser'], batch['input'] * w, batch['target'])
    pixel = lambda w: jnp.mean(jnp.abs(batch['input'] * w - batch['target']))
    expected = (regulariser(params['w']), jax.grad(regulariser)(params['w']),
                jax.grad(pixel)(params['w']))
    return loss, metrics, grads, expected

  loss, metrics, (g_params, g_frozen), expected = run(params, frozen)
  value, erl_only, pixel_only = map(float, expected)
  assert float(metrics['erl']) == pytest.approx(value, rel=1e-5)
  assert float(metrics['loss']) == float(loss) == pytest.approx(
      float(metrics['pixel']) + 0.1 * value, rel=1e-5)
  assert all(not np.any(leaf) for leaf in jax.tree.leaves(g_frozen))
  assert erl_only != 0
  assert float(g_params['w']) == pytest.approx(pixel_only + 0.1 * erl_only,
                                               rel=1e-4)


def test_the_bcm_is_checked_without_its_params_and_loaded_once(
    bcm_workdir, monkeypatch):
  """validate_config reads saved configs only; the params load once."""
  loads = []
  load_params = checkpointing.load_params

  def counting_load_params(path):
    loads.append(path)
    return load_params(path)
  monkeypatch.setattr(checkpointing, 'load_params', counting_load_params)
  config = _uec_config(bcm_workdir)
  train.validate_config(config)
  assert not loads
  frozen = train.load_frozen(config)
  assert set(frozen['regulariser']) == {'encoder', 'transformer'}
  assert len(loads) == 2  # Stage 2, then the stage 1 its config names.
  assert loads[0] == str(bcm_workdir)


def test_missing_or_wrong_bcm_checkpoint_is_named_with_the_fix(
    bcm_workdir, tmp_path):
  config = _uec_config(bcm_workdir)
  config.regulariser.bcm_workdir = None
  with pytest.raises(ValueError, match=r'config.regulariser.bcm_workdir(.|\n)*'
                     r'configs/erl_bcm.py'):
    train.validate_config(config)

  missing = tmp_path / 'no_such_run'
  config.regulariser.bcm_workdir = str(missing)
  with pytest.raises(FileNotFoundError) as error:
    train.validate_config(config)
  assert 'No ERL stage-2 (BCM) checkpoint in ' + str(missing) in str(
      error.value)
  assert '--config=configs/erl_bcm.py --workdir=' + str(missing) in str(
      error.value)

  # The stage-1 auto-encoder, or a corrector, is not a BCM.
  stage1 = bcm_workdir.parent / 'stage1'
  for wrong, kind in ((stage1, 'erl_autoencoder'), (tmp_path / 'uec', 'uec')):
    if kind == 'uec':
      checkpoint_writer.write_params_checkpoint(wrong, {'x': np.zeros(2)},
                                                {'model': 'uec'})
    config.regulariser.bcm_workdir = str(wrong)
    with pytest.raises(ValueError, match=rf"holds a '{kind}' checkpoint, not "
                       r'an ERL stage-2 BCM(.|\n)*configs/erl_bcm.py'):
      train.load_frozen(config)

  # A BCM whose stage-1 workdir is gone.
  orphan = tmp_path / 'orphan'
  params, saved, _ = checkpointing.load_params(str(bcm_workdir))
  saved['erl']['autoencoder_workdir'] = str(tmp_path / 'deleted_stage1')
  checkpoint_writer.write_params_checkpoint(orphan, params, saved)
  config.regulariser.bcm_workdir = str(orphan)
  with pytest.raises(FileNotFoundError, match='orphan reads its f_e from the '
                     'stage-1 workdir(.|\n)*deleted_stage1'):
    train.validate_config(config)

  config.regulariser.bcm_workdir = str(bcm_workdir)
  config.regulariser.weight = 0.0
  with pytest.raises(ValueError,
                     match='config.regulariser.weight must be positive'):
    train.validate_config(config)


def test_uec_trained_with_erl_exports_like_one_without(
    bcm_workdir, sample_data_dir, tmp_path, monkeypatch):
  config = _uec_config(bcm_workdir, sample_data_dir)
  config.num_train_steps = 2
  config.log_every_steps = config.checkpoint_every_steps = 2
  config.loss.num_passes = 1  # Faster to compile than three.
  # Evaluation is not under test (and costs a full-resolution compile), nor
  # is sharding (tests/test_train.py): one device compiles faster.
  monkeypatch.setattr(train, 'run_evaluation', lambda *a, **k: {})
  make_mesh = train.make_mesh
  monkeypatch.setattr(train, 'make_mesh',
                      lambda devices=None: make_mesh(jax.devices()[:1]))
  train.train_and_evaluate(config, str(tmp_path))

  params, saved, step = checkpointing.load_params(str(tmp_path))
  assert step == 2 and saved['regulariser']['name'] == 'erl'

  # The same tree as a corrector trained without ERL: UEC's params only.
  model = uec_task.create_model(config)
  expected = jax.eval_shape(lambda: uec_task.init_params(
      model, jax.random.key(0)))
  shapes = lambda tree: jax.tree.map(lambda x: tuple(np.shape(x)), tree)
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  assert shapes(params) == shapes(expected)

  corrector = inference.Corrector.from_checkpoint(str(tmp_path), model='uec')
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (2, 24, 40, 3), dtype=np.uint8)
  reference = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  out = corrector(images, reference=reference)
  assert out.shape == images.shape and out.dtype == np.float32
  assert np.all(np.isfinite(out)) and np.all((out >= 0) & (out <= 1))
