"""Evaluation: metrics against plain numpy, protocol variants, grouping."""

import json

import cv2
import numpy as np
import pytest

from expcorr_jax import evaluation
from expcorr_jax import input_pipeline
from expcorr_jax import pixels
from expcorr_jax import protocols
from expcorr_jax import reports
from expcorr_jax.metrics import image_quality
from expcorr_jax.tasks import recnet as recnet_task
from expcorr_jax.tasks import uec as uec_task

FULL, ENC_FECNET = protocols.FULL, protocols.ENC_FECNET
RECNET = recnet_task.RECNET_PROTOCOL
UEC256 = uec_task.UEC256


def _images(shape=(24, 29, 3), seed=0):
  rng = np.random.default_rng(seed)
  a = rng.integers(0, 256, shape, dtype=np.uint8)
  noise = rng.integers(-40, 41, shape)
  b = np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)
  return a, b


def _numpy_ssim(x, y):
  """SSIM of two 2-D float64 images, 11x11 Gaussian (1.5), valid windows."""
  taps = np.exp(-(np.arange(11) - 5.0)**2 / (2 * 1.5**2))
  window = np.outer(taps, taps) / np.outer(taps, taps).sum()
  height, width = x.shape[0] - 10, x.shape[1] - 10

  def filt(image):
    out = np.zeros((height, width))
    for i in range(11):
      for j in range(11):
        out += window[i, j] * image[i:i + height, j:j + width]
    return out

  mu_x, mu_y = filt(x), filt(y)
  var_x = filt(x * x) - mu_x**2
  var_y = filt(y * y) - mu_y**2
  cov = filt(x * y) - mu_x * mu_y
  c1, c2 = (0.01 * 255)**2, (0.03 * 255)**2
  return np.mean(((2 * mu_x * mu_y + c1) * (2 * cov + c2)) /
                 ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)))


def test_psnr_is_the_textbook_formula():
  a, b = _images()
  mse = np.mean((a.astype(np.float64) - b)**2)
  assert image_quality.psnr(a, b) == pytest.approx(10 * np.log10(255**2 / mse),
                                                rel=1e-12)
  assert image_quality.psnr(a, a) == float('inf')


def test_rgb_ssim_is_the_mean_over_channels():
  a, b = _images()
  want = np.mean([_numpy_ssim(a[..., c].astype(np.float64),
                              b[..., c].astype(np.float64)) for c in range(3)])
  assert image_quality.ssim(a, b) == pytest.approx(want, abs=2e-6)
  assert image_quality.ssim(a, b, 'rgb') == image_quality.ssim(a, b)
  assert image_quality.ssim(a, a) == pytest.approx(1.0, abs=1e-6)


def test_gray_ssim_is_ssim_of_the_bt601_luma():
  a, b = _images()
  luma = lambda im: np.round(im.astype(np.float64) @ [0.299, 0.587, 0.114])
  want = _numpy_ssim(luma(a), luma(b))
  assert image_quality.ssim(a, b, 'gray') == pytest.approx(want, abs=2e-6)
  # Swapping red and blue is a large change in colour, a smaller one in luma.
  swapped = a[..., ::-1]
  assert image_quality.ssim(a, swapped, 'gray') > image_quality.ssim(a, swapped) + 0.1
  # The same luma as cv2's RGB -> gray (which rounds in fixed point).
  gray = image_quality.to_gray(a)
  diff = np.abs(gray.astype(int) - cv2.cvtColor(a, cv2.COLOR_RGB2GRAY))
  assert gray.dtype == np.uint8 and diff.max() <= 1 and diff.mean() < 0.01
  with pytest.raises(ValueError, match='color'):
    image_quality.ssim(a, b, 'ycbcr')


def test_resize_to_multiple_of_4():
  a, _ = _images((30, 41, 3))
  resized = protocols.resize_to_multiple(a, 4)
  assert resized.shape == (32, 44, 3) and resized.dtype == np.float32
  # Bilinear with half-pixel centres (cv2 INTER_LINEAR) of the float image.
  want = cv2.resize(a.astype(np.float32) / 255, (44, 32),
                    interpolation=cv2.INTER_LINEAR)
  np.testing.assert_allclose(resized, want, atol=1e-6)
  # A constant image stays constant; a horizontal ramp stays monotonic.
  flat = protocols.resize_to_multiple(np.full((5, 7, 3), 100, np.uint8))
  assert flat.shape == (8, 8, 3)
  np.testing.assert_allclose(flat, 100 / 255, atol=1e-6)
  ramp = np.repeat(np.arange(0, 250, 10, dtype=np.uint8)[None, :, None],
                   9, 0).repeat(3, 2)
  row = protocols.resize_to_multiple(ramp)[6, :, 0]
  assert np.all(np.diff(row) >= 0) and row.shape == (28,)
  # Sizes already a multiple of 4 are kept exactly; uint16 scales by 65535.
  kept, _ = _images((32, 44, 3))
  np.testing.assert_array_equal(
      pixels.to_uint8(protocols.resize_to_multiple(kept)), kept)
  deep = np.full((4, 8, 3), 65535, np.uint16)
  np.testing.assert_array_equal(protocols.resize_to_multiple(deep), 1.0)


@pytest.mark.parametrize('tag,group', [
    ('N1.5', 'under'), ('N1', 'under'), ('0', 'over'), ('P1', 'over'),
    ('P1.5', 'over'), ('neg3', 'under'), ('pos2', 'over'), ('low', 'under'),
    ('over', 'over'), ('', None), ('mystery', None)])
def test_exposure_groups_as_the_papers_report(tag, group):
  assert evaluation.exposure_group(tag) == group


def _pairs(tags, shape=(24, 24, 3)):
  pairs = []
  for i, tag in enumerate(tags):
    target, image_in = _images(shape, seed=i)
    pairs.append(input_pipeline.EvalPair(name=f's{i}_{tag}', ev_tag=tag,
                                         input=image_in, target=target))
  return pairs


def _halfway(pair, protocol):
  """A 'corrector' halfway between input and target (deterministic)."""
  del protocol
  mid = (pair.input.astype(int) + pair.target) // 2
  return pair.input, mid.astype(np.uint8), pair.target


def test_report_per_ev_groups_and_all():
  pairs = _pairs(['N1.5', 'N1', 'N1', 'P1', 'P1.5', '0'])
  report, grid = evaluation.evaluate(pairs, _halfway, [ENC_FECNET, FULL],
                                     num_grid_images=2)
  assert len(grid) == 2 and len(grid[0]) == 3
  psnrs = [image_quality.psnr(_halfway(p, '')[1], p.target) for p in pairs]
  for protocol in ('enc_fecnet', 'full'):
    result = report[protocol]
    assert list(result['per_ev']) == ['N1.5', 'N1', '0', 'P1', 'P1.5']
    assert result['per_ev']['N1']['count'] == 2
    assert result['per_ev']['N1']['psnr'] == pytest.approx(
        np.mean(psnrs[1:3]))
    assert result['under']['count'] == 3 and result['over']['count'] == 3
    assert result['under']['psnr'] == pytest.approx(np.mean(psnrs[:3]))
    assert result['over']['psnr'] == pytest.approx(np.mean(psnrs[3:]))
    assert result['all']['psnr'] == pytest.approx(np.mean(psnrs))
    assert result['all']['identity_psnr'] == pytest.approx(np.mean(
        [image_quality.psnr(p.input, p.target) for p in pairs]))
    assert 'lpips' not in result['all'] and result['lpips_variant'] is None
  # The protocol picks the SSIM variant; UEC's names keep the RGB default.
  assert report['enc_fecnet']['ssim_variant'] == image_quality.SSIM_VARIANTS[
      'gray']
  assert report['full']['ssim_variant'] == image_quality.SSIM_VARIANT
  first = pairs[0]
  assert report['enc_fecnet']['per_ev']['N1.5']['ssim'] == pytest.approx(
      image_quality.ssim(_halfway(first, '')[1], first.target, 'gray'))
  assert report['full']['per_ev']['N1.5']['ssim'] == pytest.approx(
      image_quality.ssim(_halfway(first, '')[1], first.target))
  table = reports.format_table(report)
  assert 'under' in table and 'over' in table and 'gray' in table


def test_sice_and_untagged_groups():
  report, _ = evaluation.evaluate(_pairs(['low', 'over', '']), _halfway,
                                  [FULL])
  result = report['full']
  assert result['under']['count'] == result['over']['count'] == 1
  assert result['all']['count'] == 3  # The untagged pair counts in 'all' only.
  only_untagged, _ = evaluation.evaluate(_pairs(['']), _halfway, [FULL])
  assert 'under' not in only_untagged['full'] and (
      'over' not in only_untagged['full'])


def test_lpips_where_the_protocol_asks(tmp_path):
  pairs = _pairs(['N1', 'P1'])
  report, _ = evaluation.evaluate(pairs, _halfway, [RECNET, ENC_FECNET])
  recnet = report['recnet']
  assert recnet['lpips_variant'] == 'lpips_vgg16_v0.1'
  assert 'lpips' not in report['enc_fecnet']['all']
  # Halfway to the target is closer to it than the input is.
  for tag in ('N1', 'P1'):
    row = recnet['per_ev'][tag]
    assert 0 < row['lpips'] < row['identity_lpips']
  assert recnet['all']['lpips'] == pytest.approx(
      np.mean([recnet['per_ev'][t]['lpips'] for t in ('N1', 'P1')]))
  assert 'LPIPS' in reports.format_table(report)
  off, _ = evaluation.evaluate(pairs, _halfway, [RECNET], lpips=False)
  assert 'lpips' not in off['recnet']['all']

  path = tmp_path / 'eval.json'
  reports.write_report(report, str(path), step=7)
  saved = json.loads(path.read_text())
  assert saved['step'] == 7
  assert saved['ssim_variants'] == {
      'recnet': image_quality.SSIM_VARIANTS['rgb'],
      'enc_fecnet': image_quality.SSIM_VARIANTS['gray']}
  assert 'ssim_variant' not in saved  # The protocols differ.
  assert saved['results']['recnet']['over']['count'] == 1


def test_uec_report_keeps_its_layout(tmp_path):
  pairs = _pairs(['N1', 'N1', 'P1'])
  identity = lambda pair, protocol: (pair.input, pair.input, pair.target)
  report, _ = evaluation.evaluate(pairs, identity, (FULL, UEC256))
  expected_psnr = np.mean([image_quality.psnr(p.input, p.target) for p in pairs])
  # 'full' reports the RGB SSIM of RECNet's code, UEC's protocol PyIQA's
  # (its official evaluation): the contrast-structure term clipped at 0.
  expected_ssims = {
      protocol: np.mean([image_quality.ssim(p.input, p.target, color)
                         for p in pairs])
      for protocol, color in (('full', 'rgb'), ('uec256', 'rgb_pyiqa'))}
  expected_ssim_y = np.mean([image_quality.ssim_y(p.input, p.target)
                             for p in pairs])
  assert list(report) == ['full', 'uec256']
  for protocol, result in report.items():
    assert list(result['per_ev']) == ['N1', 'P1']
    assert result['per_ev']['N1']['count'] == 2
    assert result['under']['count'] == 2 and result['over']['count'] == 1
    # The identity corrector scores as the identity baseline, and both as
    # the metrics computed here.
    for prefix in ('', 'identity_'):
      assert result['all'][f'{prefix}psnr'] == pytest.approx(expected_psnr)
      assert result['all'][f'{prefix}ssim'] == pytest.approx(
          expected_ssims[protocol])
      assert result['all'][f'{prefix}ssim_y'] == pytest.approx(
          expected_ssim_y)
  assert report['uec256']['paper_ssim'] == 'ssim_y'
  path = tmp_path / 'eval.json'
  reports.write_report(report, str(path))
  saved = json.loads(path.read_text())
  assert saved['ssim_variants'] == {
      'full': image_quality.SSIM_VARIANT,
      'uec256': image_quality.SSIM_VARIANTS['rgb_pyiqa']}
  # inf PSNR (identical images) is written as a string, not invalid JSON.
  report, _ = evaluation.evaluate(
      pairs[:1], lambda pair, protocol: (pair.input, pair.target, pair.target),
      (FULL,))
  reports.write_report(report, str(path))
  assert json.loads(path.read_text())['results']['full']['all']['psnr'] == 'inf'


def test_images_of_three_sizes_compile_three_programs_and_batch_alike():
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from expcorr_jax import corrections  # pylint: disable=g-import-not-at-top
  from expcorr_jax.models import uec  # pylint: disable=g-import-not-at-top
  model = uec.UEC(encoder_height=24)
  params = uec_task.init_params(model, jax.random.key(0))
  rng = np.random.default_rng(3)
  sizes = [(41, 53), (37, 61), (41, 53), (45, 39), (37, 61), (41, 53)]
  pairs = [input_pipeline.EvalPair(
      name=f'p{i}', ev_tag='N1',
      input=rng.integers(0, 256, size + (3,), dtype=np.uint8),
      target=rng.integers(0, 256, size + (3,), dtype=np.uint8))
           for i, size in enumerate(sizes)]
  reference = rng.random((32, 32, 3), dtype=np.float32)
  correct = evaluation.pair_corrector(uec_task.TASK, model, params, reference)
  assert correct.batch_size == jax.local_device_count() == 8
  before = corrections.compile_count()
  report, _ = evaluation.evaluate(pairs, correct, [FULL])
  assert report['full']['all']['count'] == 6
  assert corrections.compile_count() - before == 3

  # Batched with other images of its size, each output is the one the
  # network gives the image alone.
  unrounded = dataclasses.replace(FULL, quantise=np.asarray)
  batched = correct.correct_many(pairs, unrounded)
  alone = jax.jit(lambda p, x, r: uec_task.correct(model, p, x, r))
  for pair, (_, output, _) in zip(pairs, (b[:3] for b in batched)):
    expected = alone(params, pixels.to_float(pair.input)[None],
                     reference[None])[0]
    np.testing.assert_allclose(output, np.asarray(expected), atol=1e-6)
