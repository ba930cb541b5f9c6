"""UEC: parity with the official PyTorch outputs, and fixture-free semantics."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from expcorr_jax.models import uec

_TOL = 1e-5
_CHECKPOINTS = {
    'exposure-errors': 'uec/uec_golden_exposure_errors.npz',
    'radiometry': 'uec/uec_golden_radiometry.npz',
}


@functools.lru_cache(maxsize=None)
def _intermediates_fn():
  model = uec.UEC()
  return jax.jit(lambda p, x, r: model.apply(
      {'params': p}, x, r, method=uec.UEC.intermediates))


@functools.lru_cache(maxsize=None)
def _run_golden(fixture_dir, checkpoint, index):
  """The JAX intermediates for one golden input (cached across tests)."""
  params = uec.load_official(f'{fixture_dir}/uec/{checkpoint}.pth')
  inputs = np.load(f'{fixture_dir}/{_CHECKPOINTS["exposure-errors"]}')
  golden = np.load(f'{fixture_dir}/{_CHECKPOINTS[checkpoint]}')
  image = inputs[f'input_{index}'][None].astype(np.float32) / 255
  reference = golden['reference'][None].astype(np.float32) / 255
  result = _intermediates_fn()(params, image, reference)
  return jax.tree.map(np.asarray, result), dict(golden)


def _max_abs(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - b)))


@pytest.mark.parametrize('index', [0, 1])
@pytest.mark.parametrize('checkpoint', list(_CHECKPOINTS))
def test_golden_parity(shared_fixture, checkpoint, index):
  fixture_dir = str(shared_fixture(_CHECKPOINTS[checkpoint]).parents[1])
  shared_fixture(f'uec/{checkpoint}.pth')
  ours, golden = _run_golden(fixture_dir, checkpoint, index)
  assert tuple(golden[f'shape_{index}']) == ours['outputs'][0].shape[1:]
  errors = {
      'features_input': _max_abs(ours['features_input'][0][0],
                                 golden[f'features_input_{index}']),
      'features_reference': _max_abs(ours['features_reference'][0],
                                     golden[f'features_reference_{index}']),
      'lambdas': _max_abs(np.stack(ours['lambdas'])[:, 0],
                          golden[f'lambda_{index}']),
  }
  output3 = ours['outputs'][-1][0]
  if f'output1_{index}' in golden:
    errors['output1'] = _max_abs(ours['outputs'][0][0],
                                 golden[f'output1_{index}'])
    errors['output3'] = _max_abs(output3, golden[f'output3_{index}'])
  else:
    y, x = golden[f'sample_yx_{index}'].T
    errors['sample_output3'] = _max_abs(output3[y, x],
                                        golden[f'sample_output3_{index}'])
    errors['mean_output3'] = _max_abs(
        output3.astype(np.float64).mean(axis=(0, 1)),
        golden[f'mean_output3_{index}'])
  print(checkpoint, index, errors)
  assert all(e <= _TOL for e in errors.values()), errors


# --- Converter. -------------------------------------------------------------

def _official_like_state_dict():
  rng = np.random.default_rng(0)
  shapes = {f'{k}.weight': s for k, (_, _, s) in uec._TORCH_LAYERS.items()}
  shapes.update({f'{k}.bias': (s[0],)
                 for k, (_, _, s) in uec._TORCH_LAYERS.items()})
  return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def test_init_matches_converter_layout():
  # eval_shape: the layout without compiling the initialisers.
  params = jax.eval_shape(
      uec.UEC().init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 48, 3)),
      jnp.zeros((1, 20, 20, 3)))['params']
  converted = uec.params_from_torch(_official_like_state_dict())
  assert jax.tree.structure(params) == jax.tree.structure(converted)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(converted)):
    assert a.shape == b.shape and a.dtype == b.dtype
  assert sum(x.size for x in jax.tree.leaves(params)) == uec.NUM_PARAMS


def test_converter_layouts():
  state = _official_like_state_dict()
  params = uec.params_from_torch(state)
  np.testing.assert_array_equal(
      params['image_encoder']['conv1']['kernel'][2, 5, 1, 7],
      state['image_encoder.conv1.weight'][7, 1, 2, 5])
  np.testing.assert_array_equal(
      params['corrector']['mid_conv']['kernel'][3, 9],
      state['mExCorrector.ex_block.mid_conv.weight'][9, 3, 0, 0])
  np.testing.assert_array_equal(params['predictor']['fc3']['kernel'][40, 6],
                                state['mDiffPredictor.fc3.weight'][6, 40])


def test_converter_refuses_bad_state_dicts():
  state = _official_like_state_dict()
  del state['mDiffPredictor.fc4.bias']
  state['extra.weight'] = np.zeros(1, np.float32)
  state['image_encoder.conv2.weight'] = np.zeros((32, 32, 5, 5), np.float32)
  with pytest.raises(ValueError) as info:
    uec.params_from_torch(state)
  message = str(info.value)
  assert "missing keys ['mDiffPredictor.fc4.bias']" in message
  assert "unexpected keys ['extra.weight']" in message
  assert 'image_encoder.conv2.weight (32, 32, 5, 5)' in message


# --- Resize semantics. ------------------------------------------------------

def _torch_bilinear_numpy(image, out_h, out_w):
  """PyTorch's upsample_bilinear2d(align_corners=False), pixel by pixel.

  As in PyTorch's CPU kernel for float32 tensors, the source coordinate is
  computed in float32 (scale = float(in) / out; src = scale * (dst + 0.5) - 0.5,
  clamped at 0); on the golden images this matches the official features
  about 8x better than float64 coordinates do. The blend here is in float64.
  """
  f32 = np.float32
  in_h, in_w, _ = image.shape
  scale_y, scale_x = f32(in_h) / f32(out_h), f32(in_w) / f32(out_w)
  out = np.zeros((out_h, out_w, image.shape[2]))
  for oy in range(out_h):
    sy = float(max(scale_y * (f32(oy) + f32(0.5)) - f32(0.5), f32(0)))
    y0 = int(sy)
    dy = 1 if y0 < in_h - 1 else 0
    ly = sy - y0
    for ox in range(out_w):
      sx = float(max(scale_x * (f32(ox) + f32(0.5)) - f32(0.5), f32(0)))
      x0 = int(sx)
      dx = 1 if x0 < in_w - 1 else 0
      lx = sx - x0
      out[oy, ox] = ((1 - ly) * ((1 - lx) * image[y0, x0]
                                 + lx * image[y0, x0 + dx])
                     + ly * ((1 - lx) * image[y0 + dy, x0]
                             + lx * image[y0 + dy, x0 + dx]))
  return out


@pytest.mark.parametrize('in_hw,out_hw', [
    ((37, 53), uec.encoder_size(37, 53, 13)),  # Upsampling, odd sizes.
    ((301, 451), uec.encoder_size(301, 451, 29)),  # Downsampling 10x.
    ((45, 23), (7, 31)),  # Mixed: down in height, up in width.
])
def test_resize_matches_pytorch_semantics(in_hw, out_hw):
  image = np.random.default_rng(1).random((*in_hw, 3)).astype(np.float32)
  ours = np.asarray(uec.resize_bilinear(image[None], *out_hw))[0]
  expected = _torch_bilinear_numpy(image.astype(np.float64), *out_hw)
  assert ours.shape == (*out_hw, 3)
  np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0)


def test_resize_known_values_and_antialias():
  ramp = np.arange(4, dtype=np.float32)[None, None, :, None]
  np.testing.assert_allclose(uec.resize_bilinear(ramp, 1, 2)[0, 0, :, 0],
                             [0.5, 2.5])
  two = np.array([0, 1], np.float32)[None, None, :, None]
  np.testing.assert_allclose(uec.resize_bilinear(two, 1, 4)[0, 0, :, 0],
                             [0, 0.25, 0.75, 1])
  # jax.image.resize antialiases by default when downsampling: not the same.
  image = np.random.default_rng(2).random((1, 64, 96, 3)).astype(np.float32)
  default = jax.image.resize(image, (1, 16, 24, 3), 'linear')
  assert np.abs(default - uec.resize_bilinear(image, 16, 24)).max() > 1e-2


def test_encoder_size_truncates():
  assert uec.encoder_size(615, 922) == (256, 383)  # 383.77...
  assert uec.encoder_size(512, 512) == (256, 256)
  assert uec.encoder_size(300, 75) == (256, 64)


# --- Model semantics with random weights. -----------------------------------

@pytest.fixture(scope='module')
def random_model():
  """A model with random (torch-layout) weights and a large lambda bias."""
  state = _official_like_state_dict()
  state = {k: v * 0.3 for k, v in state.items()}
  state['mDiffPredictor.fc4.bias'] = np.array([2.5], np.float32)  # Clamps.
  return uec.UEC(), uec.params_from_torch(state)


def test_range_shape_and_batching(random_model):
  model, params = random_model
  rng = np.random.default_rng(4)
  images = rng.random((2, 33, 47, 3)).astype(np.float32)
  references = rng.random((2, 21, 29, 3)).astype(np.float32)
  apply = jax.jit(functools.partial(model.apply, {'params': params}))
  out = apply(images, references)
  assert out.shape == images.shape and out.dtype == jnp.float32
  assert float(out.min()) >= 0 and float(out.max()) <= 1
  assert float(out.min()) == 0 or float(out.max()) == 1  # Clamped somewhere.
  for i in range(2):
    single = apply(images[i:i + 1], references[i:i + 1])
    np.testing.assert_allclose(out[i:i + 1], single, atol=1e-6)
  # One reference broadcast over the batch equals repeating it.
  shared = apply(images, references[:1])
  repeated = apply(images, np.repeat(references[:1], 2, axis=0))
  np.testing.assert_allclose(shared, repeated, atol=1e-6)
  with pytest.raises(ValueError, match='one per image'):
    apply(images, np.concatenate([references] * 2))


def test_passes_are_consistent(random_model):
  model, params = random_model
  rng = np.random.default_rng(5)
  images = rng.random((1, 25, 31, 3)).astype(np.float32)
  references = rng.random((1, 40, 40, 3)).astype(np.float32)
  apply = functools.partial(model.apply, {'params': params})
  steps = apply(images, references, 3, method=uec.UEC.intermediates)
  one = apply(images, references, method=uec.UEC.single_pass)
  three = apply(images, references, 3, method=uec.UEC.multi_pass)
  np.testing.assert_array_equal(one, steps['outputs'][0])
  np.testing.assert_array_equal(three, steps['outputs'][2])
  # A pass is the blend with that pass's lambda, then the clamp.
  lam = steps['lambdas'][1]
  h = model.apply({'params': params}, steps['outputs'][0],
                  method=lambda m, x: m.corrector(x))
  manual = np.clip(lam * h + (1 - lam) * steps['outputs'][0], 0, 1)
  np.testing.assert_allclose(steps['outputs'][1], manual, atol=1e-6)
  # Lambda of pass 2 is predicted from pass 1's output.
  feats = apply(steps['outputs'][0], uec.encoder_size(25, 31),
                method=uec.UEC.encode)
  np.testing.assert_allclose(feats, steps['features_input'][1], atol=1e-6)


def test_gradients_are_finite(random_model):
  """Gradients flow through chained passes (lambda re-predicted each time)."""
  model, params = random_model
  rng = np.random.default_rng(6)
  x, target = (rng.random((2, 24, 24, 3)).astype(np.float32) for _ in range(2))

  def loss(p):
    out = model.apply({'params': p}, x, target, 2)
    return jnp.mean((out - target) ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
  for module in ('image_encoder', 'predictor', 'corrector'):
    assert any(float(jnp.abs(g).max()) > 0
               for g in jax.tree.leaves(grads[module])), module
