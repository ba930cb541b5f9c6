"""SSIM: identities, an independent float64 reference, scikit-image."""

import numpy as np
import pytest
from skimage import metrics

from expcorr_jax.metrics import ssim as ssim_lib


def _reference(x, y, padding, max_val=1.0):
  """Direct float64 SSIM map mean over all axes (x, y: (N, H, W, C))."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  w = ssim_lib.gaussian_window().astype(np.float64)
  pad = 5 if padding == 'zero' else 0

  def filt(a):
    a = np.pad(a, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, v = a.shape[1] - 10, a.shape[2] - 10
    return sum(w[i, j] * a[:, i:i + h, j:j + v]
               for i in range(11) for j in range(11))

  mx, my = filt(x), filt(y)
  vx, vy, cxy = filt(x * x) - mx ** 2, filt(y * y) - my ** 2, filt(x * y) - mx * my
  c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
  m = ((2 * mx * my + c1) * (2 * cxy + c2)) / (
      (mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
  return m.mean()


@pytest.fixture
def pair():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(2, 23, 31, 3)).astype(np.float32)
  y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
  return x, y


def test_window():
  w = ssim_lib.gaussian_window(11, 1.5)
  assert w.shape == (11, 11) and w.dtype == np.float32
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(w, w.T)
  assert w.argmax() == 60  # centre


@pytest.mark.parametrize('padding', ['zero', 'valid'])
def test_identity_is_one(pair, padding):
  x = pair[0]
  np.testing.assert_allclose(ssim_lib.ssim(x, x, padding=padding), 1.0,
                             atol=1e-6)


@pytest.mark.parametrize('padding', ['zero', 'valid'])
def test_matches_float64_reference(pair, padding):
  x, y = pair
  got = float(ssim_lib.ssim(x, y, padding=padding))
  np.testing.assert_allclose(got, _reference(x, y, padding), rtol=1e-6)
  assert got < 1.0
  np.testing.assert_allclose(got, float(ssim_lib.ssim(y, x, padding=padding)),
                             rtol=1e-6)


def test_map_shapes(pair):
  x, y = pair
  assert ssim_lib.ssim_map(x, y).shape == (2, 23, 31, 3)
  assert ssim_lib.ssim_map(x, y, padding='valid').shape == (2, 13, 21, 3)
  assert ssim_lib.ssim(x, y, per_image=True).shape == (2,)
  np.testing.assert_allclose(
      ssim_lib.ssim(x, y, per_image=True).mean(), ssim_lib.ssim(x, y),
      rtol=1e-6)


def test_grayscale_and_hwc(pair):
  x, y = pair
  gray = ssim_lib.ssim(x[0, ..., 0], y[0, ..., 0], padding='valid')
  np.testing.assert_allclose(
      gray, ssim_lib.ssim(x[0, ..., :1], y[0, ..., :1], padding='valid'),
      rtol=1e-6)
  np.testing.assert_allclose(
      gray, _reference(x[:1, ..., :1], y[:1, ..., :1], 'valid'), rtol=1e-6)
  # Per channel: the colour score is the mean of the three channel scores.
  per_channel = [ssim_lib.ssim(x[0, ..., c], y[0, ..., c]) for c in range(3)]
  np.testing.assert_allclose(ssim_lib.ssim(x[0], y[0]),
                             np.mean(per_channel), rtol=1e-6)


def test_valid_matches_scikit_image(pair):
  """'valid' is the classic evaluation SSIM (skimage, Gaussian weights)."""
  x, y = pair
  want = metrics.structural_similarity(
      x[0].astype(np.float64), y[0].astype(np.float64), data_range=1.0,
      channel_axis=-1, gaussian_weights=True, sigma=1.5,
      use_sample_covariance=False)
  np.testing.assert_allclose(ssim_lib.ssim(x[0], y[0], padding='valid'), want,
                             rtol=1e-5)


def test_uint8_range(pair):
  x, y = (np.round(a * 255) for a in pair)
  np.testing.assert_allclose(
      ssim_lib.ssim(x, y, max_val=255.0, padding='valid'),
      ssim_lib.ssim(x / 255, y / 255, padding='valid'), rtol=1e-5)


def test_bad_arguments(pair):
  x, y = pair
  with pytest.raises(ValueError, match='padding'):
    ssim_lib.ssim(x, y, padding='reflect')
  with pytest.raises(ValueError, match='shapes differ'):
    ssim_lib.ssim(x, y[:, :-1])
  with pytest.raises(ValueError, match='smaller than'):
    ssim_lib.ssim(x[:, :8], y[:, :8], padding='valid')



def test_filter_adjoint_is_autodiffs():
  """The separable filter's hand-written adjoint gives autodiff's gradient."""
  import jax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(2, 23, 31, 15)).astype(np.float32)
  # Asymmetric taps, so that a missing reversal would show.
  taps = tuple(float(t) * (1 + 0.1 * i)
               for i, t in enumerate(ssim_lib.gaussian_taps(11, 1.5)))
  cotangent = rng.standard_normal((2, 13, 21, 15)).astype(np.float32)
  # pylint: disable=protected-access
  got = jax.vjp(lambda a: ssim_lib._filter_with_adjoint(a, taps),
                images)[1](cotangent)[0]
  want = jax.vjp(lambda a: ssim_lib._shifted_sums(a, taps),
                 images)[1](cotangent)[0]
  # pylint: enable=protected-access
  assert np.max(np.abs(want)) > 0.1
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
