"""Tests of data_prep.raw_render on a real RAW (Kodak DC50, 768x512 Bayer).

The tolerances are derived, not tuned: each test's docstring gives the
derivation. `M` is the largest code, 2^bits - 1.
"""

import functools
import shutil

import numpy as np
import pytest
import rawpy
from scipy import optimize

from data_prep import raw_render

RAW = 'raw/kodak_dc50.kdc'


@functools.lru_cache(maxsize=None)
def _decode(path) -> raw_render.LinearImage:
  return raw_render.decode_raw(path)


def _half_step(codes: np.ndarray, max_code: int) -> np.ndarray:
  """Largest linear-light distance from code c to the edges of its bin.

  A code c stands for every encoded value in [c - 1/2, c + 1/2] / M, so the
  linear light it was rounded from is within this distance of decode(c / M).
  """
  def decode(c):
    return raw_render.srgb_decode(np.clip(c, 0, max_code) / max_code)
  centre = decode(codes)
  return np.maximum(decode(codes + 0.5) - centre, centre - decode(codes - 0.5))


def test_decode_reports_the_raw_facts(shared_fixture):
  image = _decode(shared_fixture(RAW))
  assert image.rgb16.dtype == np.uint16
  assert image.rgb16.shape == (512, 768, 3)
  assert image.metadata['white_level'] == 16383
  assert image.metadata['raw_size'] == [512, 768]
  assert image.metadata['height'] == 512 and image.metadata['width'] == 768


def test_srgb_decode_inverts_encode():
  linear = np.linspace(0.0, 1.0, 10001)
  np.testing.assert_allclose(
      raw_render.srgb_decode(raw_render.srgb_encode(linear)), linear,
      rtol=0, atol=1e-12)


@pytest.mark.parametrize('bits', [16, 8])
@pytest.mark.parametrize('ev', [-1.5, -1.0, 0.0, 0.5])
def test_one_ev_more_doubles_linear_light(shared_fixture, ev, bits):
  """srgb_decode(render(EV + 1)) = 2 srgb_decode(render(EV)) where unclipped.

  Tolerance. Both renders start from the same 16-bit linear value L per
  pixel, so the only error is the final rounding to codes: render(EV) is
  round(M srgb_encode(L 2^EV)), so the true L 2^EV lies within h(c), the
  half-step of `_half_step`, of srgb_decode(c / M). Hence, per pixel,
    |decode(c1) - 2 decode(c0)| <= h(c1) + 2 h(c0)   (+1e-12 float slack),
  checked pixel by pixel. As a single number: srgb_decode's slope is at most
  2.4 / 1.055 = 2.275 (at 1.0), so h <= 0.5 / M * 2.275 and the error is at
  most 3 * 0.5 * 2.275 / M: 5.21e-5 for 16 bits, 1.34e-2 for 8 bits (the
  8-bit bound is ~256x looser, as its codes are). Pixels clipped at M in the
  brighter render are excluded: clipping is a separate test.
  """
  image = _decode(shared_fixture(RAW))
  max_code = 2**bits - 1
  c0 = raw_render.expose(image, ev, bits=bits).astype(np.float64)
  c1 = raw_render.expose(image, ev + 1, bits=bits).astype(np.float64)
  unclipped = c1 < max_code
  assert unclipped.mean() > 0.5, 'too few unclipped pixels to test'
  c0, c1 = c0[unclipped], c1[unclipped]
  error = np.abs(raw_render.srgb_decode(c1 / max_code) -
                 2 * raw_render.srgb_decode(c0 / max_code))
  bound = _half_step(c1, max_code) + 2 * _half_step(c0, max_code) + 1e-12
  assert np.all(error <= bound), float((error - bound).max())
  assert error.max() <= 3 * 0.5 * (2.4 / 1.055) / max_code
  # The bound is tight enough to catch a wrong exposure: 2^1.01 instead of 2.
  wrong = np.abs(raw_render.srgb_decode(c1 / max_code) -
                 2**1.01 * raw_render.srgb_decode(c0 / max_code))
  if bits == 16:
    assert np.mean(wrong > bound) > 0.5


def _libraw_srgb_curve(linear: np.ndarray) -> np.ndarray:
  """LibRaw's output curve for gamma=(2.4, 12.92), from its definition.

  LibRaw (dcraw's gamma_curve) does not use the IEC sRGB constants (toe
  below 0.0031308, offset 0.055). It keeps the exponent 1/2.4 and the toe
  slope 12.92 and solves for the break point x0 and offset a at which the
  line 12.92 x meets (1 + a) x^(1/2.4) - a with the SAME slope: a = 12.92 x0
  (2.4 - 1), and x0 from the slope condition. That gives x0 = 0.0030413,
  a = 0.0550107 and a curve within 9.75e-6 of exact sRGB everywhere.
  """
  power, slope = 1 / 2.4, 12.92

  def slope_mismatch(x0):
    offset = slope * x0 * (1 / power - 1)
    return (1 + offset) * power * x0**(power - 1) - slope

  x0 = optimize.brentq(slope_mismatch, 1e-4, 1e-2, xtol=1e-15)
  offset = slope * x0 * (1 / power - 1)
  linear = np.asarray(linear, np.float64)
  return np.where(linear < x0, slope * linear,
                  (1 + offset) * np.power(linear, power) - offset)


def test_libraw_curve_is_close_to_srgb():
  linear = np.linspace(0, 1, 1_000_001)
  difference = np.abs(_libraw_srgb_curve(linear) -
                      raw_render.srgb_encode(linear))
  assert 9e-6 < difference.max() < 1e-5


@pytest.mark.parametrize('bits', [8, 16])
def test_ev0_matches_libraw_postprocessing(shared_fixture, bits):
  """EV 0 equals LibRaw's own sRGB render up to rounding conventions.

  LibRaw, given our linear-decode settings but gamma=(2.4, 12.92), maps the
  same 16-bit linear level i (same demosaic, white balance, matrix) through
    16 bits: floor(65536 f(i / 65536)),  8 bits: that >> 8 = floor(256 f),
  with f its curve (see `_libraw_srgb_curve`), while we output
  round(M s(i / 65535)), s the exact sRGB transfer. The encoded values f and
  s differ by at most eps = max_i |f(i/65536) - s(i/65535)|, computed below
  over all 65536 levels (the curve difference, <= 9.75e-6, plus the
  65535-vs-65536 normalisation, <= 6.7e-6). So a LibRaw code c pins f to
  [c, c + 1) / 2^bits, hence s to that interval widened by eps, and our code
  to round(M * that): checked per pixel. Overall this allows at most 1 code
  at 8 bits (floor vs round and /256 vs /255 each shift < 1 code; the curves
  differ by 0.0025 code) and 2 codes at 16 bits (65535 eps = 1.1 codes more).
  """
  path = shared_fixture(RAW)
  ours = raw_render.expose(_decode(path), 0.0, bits=bits).astype(np.int64)
  args = raw_render.linear_postprocess_args()
  args.update(gamma=(2.4, 12.92), output_bps=bits)
  with rawpy.imread(str(path)) as raw:
    theirs = raw.postprocess(**args).astype(np.int64)

  levels = np.arange(65536)
  eps = np.max(np.abs(_libraw_srgb_curve(levels / 65536) -
                      raw_render.srgb_encode(levels / 65535)))
  assert eps < 1.7e-5
  max_code, scale = 2**bits - 1, 2**bits
  lowest = np.ceil(max_code * (theirs / scale - eps) - 0.5)
  highest = np.floor(max_code * ((theirs + 1) / scale + eps) + 0.5)
  assert np.all((lowest <= ours) & (ours <= highest))
  assert np.abs(ours - theirs).max() <= (1 if bits == 8 else 2)


def test_over_exposure_clips_to_white(shared_fixture):
  """Light pushed past saturation renders as exactly 255, and more of it."""
  image = _decode(shared_fixture(RAW))
  at_0 = raw_render.expose(image, 0.0)
  at_p15 = raw_render.expose(image, 1.5)
  saturated = image.rgb16.astype(np.float64) * 2**1.5 >= raw_render.LINEAR_MAX
  assert saturated.any()
  assert np.all(at_p15[saturated] == 255)
  assert np.count_nonzero(at_p15 == 255) > 10 * max(
      np.count_nonzero(at_0 == 255), 1)
  assert np.all(at_p15[at_0 == 255] == 255)  # Brighter never unclips.
  assert np.all(at_p15.astype(int) >= at_0)  # Monotonic in EV, pixel-wise.


def test_truncated_raw_raises_naming_the_file(shared_fixture, tmp_path):
  source = shared_fixture(RAW)
  truncated = tmp_path / 'truncated_copy.kdc'
  truncated.write_bytes(source.read_bytes()[:40_000])
  with pytest.raises(raw_render.RawDecodeError, match='truncated_copy.kdc'):
    raw_render.decode_raw(truncated)
  shutil.copy(source, tmp_path / 'intact.kdc')  # The copy itself is fine.
  assert raw_render.decode_raw(tmp_path / 'intact.kdc').height == 512
