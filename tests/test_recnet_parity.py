"""RECNet: parity with the official PyTorch network, and general semantics."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from expcorr_jax.weights import unpickling
from expcorr_jax.models import recnet_conv_ops
from expcorr_jax.models import recnet

TOL = 1e-5
# The output's tolerance must stay below the network's own `+ 1e-5` output
# offset, or a model without it would pass. Measured max abs error: 1.2e-7
# (recnet_golden_nc8), 6.6e-7 (recnet_golden_wide_nc8).
OUTPUT_TOL = 2e-6
# recnet_golden_wide_nc8, every tensor. Measured max abs errors: mask 7.8e-7
# (its last conv is x600, which scales the logits' rounding), output 6.6e-7,
# features_block1..5 1.5e-7 .. 4.2e-7, features_pre 0.
WIDE_TOL = 2e-6
NAMES = ['output', 'mask', 'features_pre'] + [
    f'features_block{i}' for i in range(1, 6)]


@functools.lru_cache(maxsize=None)
def _official(sd_path, golden_path):
  sd = unpickling.load_state_dict(sd_path)
  golden = dict(np.load(golden_path))
  model = recnet.RECNet(**recnet.infer_config(sd))
  params = recnet.params_from_torch(sd)
  apply = jax.jit(lambda p, x: model.apply({'params': p}, x))
  out = apply(params, jnp.asarray(golden['input']))
  tensors = {'output': out.output, 'mask': out.mask,
             'features_pre': out.features_pre}
  for i, f in enumerate(out.block_features):
    tensors[f'features_block{i + 1}'] = f
  outputs = {k: np.asarray(v) for k, v in tensors.items()}
  return sd, golden, apply, params, outputs


@pytest.fixture
def official(shared_fixture):
  """(state_dict, golden, jitted apply, params, our outputs) for nc=8.

  Loaded and run once per session (cached): the fixture paths come from the
  function-scoped `shared_fixture`.
  """
  return _official(str(shared_fixture('recnet/recnet_random_nc8.pth')),
                   str(shared_fixture('recnet/recnet_golden_nc8.npz')))


@pytest.fixture
def official_wide(shared_fixture):
  """As `official`, for the nc=8 variant whose mask spans 0.02..0.97 and
  whose output clips (see ../shared/fixtures/README.md)."""
  return _official(str(shared_fixture('recnet/recnet_wide_nc8.pth')),
                   str(shared_fixture('recnet/recnet_golden_wide_nc8.npz')))


def test_official_layout_and_config(official):
  sd, _, _, params, _ = official
  assert len(sd) == 229
  assert sum(v.size for v in sd.values()) == 38975
  assert recnet.infer_config(sd) == dict(nc=8, num_blocks=5, num_heads=2,
                                         reduction=4, blur_size=31)
  assert set(recnet.torch_key_layout()) == set(sd)
  model = recnet.RECNet()
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 8, 8, 3)))['params']
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  for s, p in zip(jax.tree.leaves(shapes), jax.tree.leaves(params)):
    assert s.shape == p.shape and p.dtype == jnp.float32
  assert sum(p.size for p in jax.tree.leaves(params)) == 38975
  # The swaps the fixture was built to catch.
  blk = params['block_3']
  np.testing.assert_allclose(blk['rin']['alpha'], 0.3, rtol=1e-6)
  np.testing.assert_allclose(blk['mcsa']['temperature'], [0.7, 1.3], rtol=1e-6)
  np.testing.assert_allclose(params['refine']['conv_out']['bias'], 0.5)


@pytest.mark.parametrize('name', NAMES)
def test_parity(official, name):
  golden, got = official[1], official[4][name]
  assert got.shape == golden[name].shape
  err = np.abs(got - golden[name]).max()
  tol = OUTPUT_TOL if name == 'output' else TOL
  assert err <= tol, f'{name}: max abs error {err:.3g}'


@pytest.mark.parametrize('name', NAMES)
def test_parity_wide(official_wide, name):
  golden, got = official_wide[1], official_wide[4][name]
  assert got.shape == golden[name].shape
  err = np.abs(got - golden[name]).max()
  assert err <= WIDE_TOL, f'{name}: max abs error {err:.3g}'


def test_wide_fixture_exercises_mask_range_and_clipping(official_wide):
  """The fixture is what it is for: a wide mask and a clipping output.

  recnet_golden_nc8's mask stays within 0.470..0.474 and its output within
  0.30..0.74, so it cannot tell a sigmoid from its tangent, nor see the clamp.
  """
  _, golden, _, _, ours = official_wide
  mask, output = golden['mask'], golden['output']
  assert mask.min() < 0.05 and mask.max() > 0.95, (mask.min(), mask.max())
  assert np.mean((mask > 0.25) & (mask < 0.75)) > 0.1  # Not just two levels.
  assert np.mean(output[..., 0] == 1.0) > 0.01  # README: about 2%.
  assert np.mean(output[..., 1:] == 0.0) > 0.01  # README: 1-2% each.
  assert np.mean((output > 0.0) & (output < 1.0)) > 0.9  # Offset visible.
  # Ours clips at exactly the same values (golden's unclipped values stay
  # 4e-5 or more from the bounds, far beyond rounding).
  np.testing.assert_array_equal(ours['output'] == 0.0, output == 0.0)
  np.testing.assert_array_equal(ours['output'] == 1.0, output == 1.0)


def test_batch_permutation(official):
  """Per-sample norms / attention: permuting the batch permutes outputs."""
  _, golden, apply, params, ours = official
  out = apply(params, jnp.asarray(golden['input'][::-1]))
  np.testing.assert_allclose(np.asarray(out.output),
                             ours['output'][::-1], atol=1e-6)
  np.testing.assert_allclose(np.asarray(out.mask),
                             ours['mask'][::-1], atol=1e-6)


def test_default_blur_kernel_is_official_init(official):
  sd = official[0]
  np.testing.assert_array_equal(
      recnet.gaussian_kernel(31, 3.0),
      sd['dualprocess.conv1.norm.blur.kernel'][0, 0])


def test_rejects_missing_unexpected_and_misshapen(official):
  sd = official[0]
  missing = dict(sd)
  del missing['dualprocess.conv2.mssa.project_in.bias']
  with pytest.raises(ValueError, match='missing.*conv2.mssa.project_in.bias'):
    recnet.params_from_torch(missing)
  extra = dict(sd, **{'dualprocess.extra.weight': np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match='unexpected.*dualprocess.extra.weight'):
    recnet.params_from_torch(extra)
  wrong = dict(sd)
  wrong['dualprocess.refine.conv_last.weight'] = np.zeros((3, 8, 5, 5),
                                                          np.float32)
  with pytest.raises(ValueError, match='wrong shapes.*conv_last.weight'):
    recnet.params_from_torch(wrong)
  with pytest.raises(ValueError, match='does not match'):
    recnet.params_from_torch(sd, nc=16)
  with pytest.raises(ValueError, match='not an official RECNet'):
    recnet.params_from_torch({'foo': np.zeros(1)})


def test_layout_inference_other_config():
  """A state_dict of another width / depth / head count round-trips."""
  config = dict(nc=12, num_blocks=3, num_heads=3, reduction=4, blur_size=31)
  rng = np.random.default_rng(0)
  sd = {k: rng.standard_normal(shape).astype(np.float32)
        for k, (_, shape) in recnet.torch_key_layout(**config).items()}
  assert recnet.infer_config(sd) == config
  params = recnet.params_from_torch(sd)
  shapes = jax.eval_shape(recnet.RECNet(**config).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 8, 8, 3)))['params']
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  for s, p in zip(jax.tree.leaves(shapes), jax.tree.leaves(params)):
    assert s.shape == p.shape
  # Torch OIHW -> Flax HWIO, grouped conv included.
  w = sd['dualprocess.conv2.mssa.dwconv5x5_1.weight']  # (12, 2, 5, 5)
  np.testing.assert_array_equal(params['block_2']['mcsa']['local_mix5']
                                ['kernel'], w.transpose(2, 3, 1, 0))


def _random_params(model, seed=0, scale=0.3):
  """Random params of the model's shapes, drawn with numpy.

  Cheaper than `model.init`, whose per-parameter threefry RNG takes long to
  compile on a CPU; `test_init` covers init itself on a small model.
  """
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 8, 8, 3)))['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype),
      shapes)


def test_other_width_runs_at_odd_size():
  model = recnet.RECNet(nc=16, num_blocks=3, num_heads=4)
  params = _random_params(model)
  assert set(params) == {'extract', 'mask_predictor', 'block_1', 'block_2',
                         'block_3', 'merge', 'refine'}
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 37, 29, 3))
  out = jax.jit(model.apply)({'params': params}, x)
  assert out.output.shape == x.shape
  assert out.mask.shape == (2, 37, 29, 1)
  assert len(out.block_features) == 3
  assert out.block_features[0].shape == (2, 37, 29, 16)
  assert np.all(np.isfinite(out.output))
  assert float(out.output.min()) >= 0.0 and float(out.output.max()) <= 1.0
  assert float(out.mask.min()) >= 0.0 and float(out.mask.max()) <= 1.0


def test_init_defaults():
  """Torch-like init: U(+-1/sqrt(fan_in)), alpha 0.5, Gaussian blur, IN 1/0.

  Checked on one RIN (the full model's init only differs in size; its
  structure is covered above through eval_shape). An 'rbg' key keeps the
  compile short: threefry RNG compiles slowly on a busy CPU.
  """
  x = jnp.zeros((1, 8, 8, 4))
  params = jax.jit(recnet.RegionInstanceNorm(4).init)(
      jax.random.key(0, impl='rbg'), x, x[..., :1])['params']
  kernel = params['tail_0']['kernel']
  assert kernel.shape == (3, 3, 4, 4) and 'bias' not in params['tail_0']
  bound = 1.0 / np.sqrt(3 * 3 * 4)
  assert 0.5 * bound < float(jnp.abs(kernel).max()) <= bound
  fuse_bound = 1.0 / np.sqrt(8)
  assert float(jnp.abs(params['fuse_1']['bias']).max()) <= fuse_bound
  assert float(params['alpha']) == 0.5
  np.testing.assert_array_equal(params['norm_scale'], np.ones(4))
  np.testing.assert_array_equal(params['norm_bias'], np.zeros(4))
  np.testing.assert_array_equal(params['blur_kernel'],
                                recnet.gaussian_kernel(31, 3.0))


def test_heads_must_divide_width():
  with pytest.raises(ValueError, match='divisible'):
    recnet.RECNet(nc=8, num_heads=3).init(jax.random.PRNGKey(0),
                                          jnp.zeros((1, 8, 8, 3)))


# ----------------------------------------------------------------------------
# The CPU formulations (shift-sum grouped convs, FFT blur) against lax convs.


def _uniform(rng, *shape):
  return jnp.asarray(rng.uniform(-1.0, 1.0, shape), jnp.float32)


@pytest.mark.parametrize('c_in,c_out,groups,k,pad,h,w', [
    (16, 16, 16, 3, 1, 13, 9),   # depthwise 3x3 (local_dw3 / global_dw3)
    (16, 16, 16, 5, 2, 11, 7),   # depthwise 5x5
    (16, 8, 8, 5, 2, 9, 15),     # 2 inputs per group (local_mix5)
    (6, 9, 3, 3, 1, 5, 8),       # 2 inputs, 3 outputs per group
    (4, 4, 4, 3, 0, 7, 6),       # VALID
    (4, 4, 4, 3, 3, 7, 6),       # padding beyond the kernel
])
def test_grouped_conv_shift_matches_lax(c_in, c_out, groups, k, pad, h, w):
  rng = np.random.default_rng(k * 100 + c_in + groups)
  x = _uniform(rng, 2, h, w, c_in)
  kernel = _uniform(rng, k, k, c_in // groups, c_out)
  fast = recnet_conv_ops.grouped_conv_shift(x, kernel, groups, pad)
  ref = recnet_conv_ops.grouped_conv_lax(x, kernel, groups, pad)
  assert fast.shape == ref.shape
  np.testing.assert_allclose(fast, ref, atol=1e-5, rtol=1e-5)
  cotangent = _uniform(rng, *ref.shape)

  def grads(conv):
    return jax.grad(lambda x, k_: jnp.sum(conv(x, k_, groups, pad)
                                          * cotangent), (0, 1))(x, kernel)

  for got, want in zip(grads(recnet_conv_ops.grouped_conv_shift),
                       grads(recnet_conv_ops.grouped_conv_lax)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('k,h,w', [(31, 37, 29), (31, 9, 40), (7, 13, 11)])
def test_blur_fft_matches_lax(k, h, w):
  """Zero padding k // 2, kernel larger than the image included."""
  rng = np.random.default_rng(k + h + w)
  m = jnp.asarray(rng.uniform(0, 1, (2, h, w, 2)), jnp.float32)
  kernel = jnp.asarray(recnet.gaussian_kernel(k, 3.0)) + 0.01 * _uniform(
      rng, k, k)  # Learnable: not separable after training.
  fast, ref = recnet_conv_ops.blur_fft(m, kernel), recnet_conv_ops.blur_lax(m, kernel)
  assert fast.shape == ref.shape == m.shape
  np.testing.assert_allclose(fast, ref, atol=1e-5)
  cotangent = _uniform(rng, *ref.shape)

  def grads(blur):
    return jax.grad(lambda m, k_: jnp.sum(blur(m, k_) * cotangent),
                    (0, 1))(m, kernel)

  for got, want in zip(grads(recnet_conv_ops.blur_fft), grads(recnet_conv_ops.blur_lax)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_conv_impl_choice():
  assert recnet._use_fast('auto') == (jax.default_backend() == 'cpu')
  assert recnet._use_fast('fast') and not recnet._use_fast('lax')
  with pytest.raises(ValueError, match='conv_impl'):
    recnet._use_fast('cudnn')


def test_fast_and_lax_models_agree():
  """Both paths through a whole (small) RECNet, output and param gradients."""
  models = {impl: recnet.RECNet(nc=4, num_blocks=1, num_heads=2, reduction=4,
                                blur_size=31, conv_impl=impl)
            for impl in ('fast', 'lax')}
  params = _random_params(models['lax'], seed=3)
  x = jax.random.uniform(jax.random.PRNGKey(2), (2, 21, 17, 3))
  results = {}
  for impl, model in models.items():
    def loss(p, model=model):
      out = model.apply({'params': p}, x)
      return jnp.mean(jnp.square(out.output - 0.5)) + jnp.mean(out.mask)
    results[impl] = jax.jit(jax.value_and_grad(loss))(params)
  np.testing.assert_allclose(results['fast'][0], results['lax'][0], rtol=1e-5)
  for got, want in zip(jax.tree.leaves(results['fast'][1]),
                       jax.tree.leaves(results['lax'][1])):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('c_in,c_out,k,pad', [
    (3, 1, 3, 1),    # RIN's attention convs
    (3, 8, 3, 1),    # extract
    (8, 8, 3, 1),    # tails, post_1, refine
    (16, 8, 3, 1),   # post_0 (as one part)
    (8, 8, 3, 0),    # VALID
])
def test_dense_conv_shift_matches_lax(c_in, c_out, k, pad):
  rng = np.random.default_rng(c_in * 10 + c_out + pad)
  x = _uniform(rng, 2, 11, 9, c_in)
  kernel = _uniform(rng, k, k, c_in, c_out)
  fast = recnet_conv_ops.dense_conv_shift(x, kernel, pad)
  ref = recnet_conv_ops.grouped_conv_lax(x, kernel, 1, pad)
  assert fast.shape == ref.shape
  np.testing.assert_allclose(fast, ref, atol=1e-5, rtol=1e-5)
  # Under differentiation the forward may take the other formulation.
  primal, _ = jax.vjp(lambda a, b: recnet_conv_ops.dense_conv_shift(a, b, pad),
                      x, kernel)
  np.testing.assert_allclose(primal, ref, atol=1e-5, rtol=1e-5)
  cotangent = _uniform(rng, *ref.shape)
  grads = [jax.grad(lambda a, b, f=f: jnp.sum(f(a, b) * cotangent), (0, 1))(
      x, kernel) for f in (
          lambda a, b: recnet_conv_ops.dense_conv_shift(a, b, pad),
          lambda a, b: recnet_conv_ops.grouped_conv_lax(a, b, 1, pad))]
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('k', [1, 3])
def test_conv_of_parts_equals_conv_of_concatenation(k):
  """A tuple input: one conv per part ('fast') = the concatenation ('lax')."""
  rng = np.random.default_rng(k)
  parts = (_uniform(rng, 2, 7, 6, 8), _uniform(rng, 2, 7, 6, 1),
           _uniform(rng, 2, 7, 6, 3))
  convs = {impl: recnet.Conv(8, k, conv_impl=impl) for impl in ('fast', 'lax')}
  params = convs['lax'].init(jax.random.PRNGKey(0), jnp.concatenate(parts, -1))
  results = {}
  for impl, conv in convs.items():
    def loss(p, ps, conv=conv):
      return jnp.sum(jnp.sin(conv.apply(p, ps)))
    results[impl] = jax.value_and_grad(loss, (0, 1))(params, parts)
  np.testing.assert_allclose(results['fast'][0], results['lax'][0], rtol=1e-5)
  for got, want in zip(jax.tree.leaves(results['fast'][1]),
                       jax.tree.leaves(results['lax'][1])):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('nc,heads', [(4, 1), (8, 2), (16, 4)])
def test_mcsa_cpu_layout_matches_lax(nc, heads):
  """recnet_mcsa's channel plan, folded attention and pair sums, any width.

  Outputs and every gradient (both inputs and all parameters) of the CPU
  layout equal the literal formulation's.
  """
  rng = np.random.default_rng(nc + heads)
  x, x_feat = _uniform(rng, 2, 9, 13, nc), _uniform(rng, 2, 9, 13, nc)
  units = {impl: recnet.MixedScaleAttention(nc, heads, impl)
           for impl in ('fast', 'lax')}
  shapes = jax.eval_shape(units['lax'].init, jax.random.PRNGKey(0), x, x_feat)
  params = jax.tree.map(
      lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype),
      shapes)
  for fast_leaf, lax_leaf in zip(
      jax.tree_util.tree_leaves_with_path(jax.eval_shape(
          units['fast'].init, jax.random.PRNGKey(0), x, x_feat)),
      jax.tree_util.tree_leaves_with_path(shapes)):
    assert fast_leaf[0] == lax_leaf[0] and fast_leaf[1].shape == lax_leaf[1].shape
  cotangents = (_uniform(rng, 2, 9, 13, nc), _uniform(rng, 2, 9, 13, nc))
  results = {}
  for impl, unit in units.items():
    outputs, vjp = jax.vjp(lambda p, a, b, unit=unit: unit.apply(p, a, b),
                           params, x, x_feat)
    results[impl] = (outputs, vjp(cotangents))
  # Float32 summation order differs (the Gram matrix sums over all pixels):
  # errors are relative to each tensor's scale.
  for got, want in zip(jax.tree.leaves(results['fast']),
                       jax.tree.leaves(results['lax'])):
    np.testing.assert_allclose(got, want, rtol=1e-5,
                               atol=1e-5 * float(np.max(np.abs(want))))
