"""Mixed exposure from RAW: exact radiometry, the maps, the builder, the CLI.

- On the real RAW fixture, wherever neither render clipped, linear(input) /
  linear(target) = 2^EV(x, y) within the quantisation bound derived below.
- A constant EV map renders bit-identical to the uniform render of its EV.
- Every drawn map has both regions (>= 10% of pixels below -0.5 EV and above
  +0.5 EV); the seed comes from the file's bytes (same bytes elsewhere, same
  maps; other bytes, other maps).
- `mixed_exposure/sample`: counts, splits by photo as the uniform sample's,
  and the stored EV grid is the one the input was rendered from.
- `render_raw --mixed=K` writes the renders and grids, and resumes.
- The 'mixed_regions' protocol scores inside each region as numpy does.
"""

import functools
import shutil

import numpy as np
import pytest
from skimage import metrics

from data_prep import build
from data_prep import image_codec
from data_prep import mixed_exposure
from data_prep import raw_render
from data_prep import render_raw
from data_prep import sample_scenes
from expcorr_jax import evaluation
from expcorr_jax import input_pipeline
from expcorr_jax import protocols

RAW = 'raw/kodak_dc50.kdc'


@functools.lru_cache(maxsize=None)
def _decode(path):
  return raw_render.decode_raw(path)


def _half_step(codes, max_code):
  """Largest linear-light distance from code c to the edges of its bin (as
  in test_raw_render.py): the light c was rounded from is within it."""
  def decode(c):
    return raw_render.srgb_decode(np.clip(c, 0, max_code) / max_code)
  centre = decode(codes)
  return np.maximum(decode(codes + 0.5) - centre, centre - decode(codes - 0.5))


@pytest.mark.parametrize('bits', [16, 8])
def test_input_over_target_is_two_to_the_ev_map(shared_fixture, bits):
  """linear(input) = 2^EV(x, y) linear(target) where neither clipped.

  Tolerance. Both renders start from the same 16-bit linear value L, so the
  only errors are the two roundings to codes: the input's code ci stands for
  light within h(ci) of decode(ci) and the target's ct for light within
  h(ct) of decode(ct), hence
    |decode(ci) - 2^EV decode(ct)| <= h(ci) + 2^EV h(ct)  (+1e-12 slack),
  pixel by pixel (`_half_step`). The EV map is the stored grid expanded
  exactly as the renderer expands it.
  """
  path = shared_fixture(RAW)
  image = _decode(path)
  (grid,) = mixed_exposure.draw_maps(image.height, image.width, 1,
                                     mixed_exposure.content_seed(path))
  max_code = 2**bits - 1
  ci = mixed_exposure.render(image, grid, bits=bits).astype(np.float64)
  ct = raw_render.expose(image, 0.0, bits=bits).astype(np.float64)
  gain = 2.0**mixed_exposure.expand(grid, image.height, image.width)[..., None]
  gain = np.broadcast_to(gain, ci.shape)
  unclipped = (ci < max_code) & (ct < max_code) & (ct > 0)
  assert unclipped.mean() > 0.5
  ci, ct, gain = ci[unclipped], ct[unclipped], gain[unclipped]
  error = np.abs(raw_render.srgb_decode(ci / max_code) -
                 gain * raw_render.srgb_decode(ct / max_code))
  bound = _half_step(ci, max_code) + gain * _half_step(ct, max_code) + 1e-12
  assert np.all(error <= bound), float((error - bound).max())
  if bits == 16:  # Tight enough to catch a map off by 1/50 EV.
    wrong = np.abs(raw_render.srgb_decode(ci / max_code) -
                   gain * 2**0.02 * raw_render.srgb_decode(ct / max_code))
    assert np.mean(wrong > bound) > 0.5


@pytest.mark.parametrize('bits', [8, 16])
@pytest.mark.parametrize('ev', [-1.5, 0.0, 1.0])
def test_a_constant_map_renders_as_the_uniform_ev(shared_fixture, ev, bits):
  image = _decode(shared_fixture(RAW))
  grid = np.full(mixed_exposure.grid_shape(image.height, image.width), ev,
                 np.float32)
  np.testing.assert_array_equal(
      mixed_exposure.render(image, grid, bits=bits),
      raw_render.expose(image, ev, bits=bits))


@pytest.mark.parametrize('size', [(512, 768), (300, 200), (64, 64), (37, 1000)])
def test_every_map_has_both_regions_and_is_smooth(size):
  height, width = size
  maps = mixed_exposure.draw_maps(height, width, 12, seed=7)
  for grid in maps:
    ev_map = mixed_exposure.expand(grid, height, width)
    under, over = mixed_exposure.region_fractions(ev_map)
    assert under >= 0.10 and over >= 0.10, (under, over)
    assert ev_map.min() >= -2.5 - 1e-6 and ev_map.max() <= 2.0 + 1e-6
    # Smooth: neighbouring pixels differ by at most the grid's slope.
    step = mixed_exposure.grid_step(height, width)
    assert np.abs(np.diff(ev_map, axis=1)).max() <= 4.5 / step + 1e-9
  assert len({grid.tobytes() for grid in maps}) == len(maps)
  again = mixed_exposure.draw_maps(height, width, 12, seed=7)
  assert all(np.array_equal(a, b) for a, b in zip(maps, again))


def test_the_seed_is_the_files_content_not_its_path(shared_fixture, tmp_path):
  original = shared_fixture(RAW)
  copy = tmp_path / 'elsewhere' / 'renamed.kdc'
  copy.parent.mkdir()
  shutil.copy(original, copy)
  assert (mixed_exposure.content_seed(original) ==
          mixed_exposure.content_seed(copy))
  other = tmp_path / 'other.kdc'
  other.write_bytes(copy.read_bytes()[:-1] + b'\0')
  assert (mixed_exposure.content_seed(other) !=
          mixed_exposure.content_seed(copy))
  assert (mixed_exposure.content_seed(copy, seed=1) !=
          mixed_exposure.content_seed(copy))


def test_the_sample_builder(tmp_path):
  data_dir = tmp_path / 'tfds'
  build.ensure_prepared('mixed_exposure/sample', data_dir)
  records = {split: [build.data_source('mixed_exposure/sample', split,
                                       data_dir)[i]
                     for i in range(len(build.data_source(
                         'mixed_exposure/sample', split, data_dir)))]
             for split in ('train', 'validation')}
  scenes = sample_scenes.SAMPLE_SCENES
  assert sum(map(len, records.values())) == 2 * len(scenes)
  for split, split_records in records.items():
    for record in split_records:
      scene = input_pipeline.text(record['scene'])
      # As the uniform sample's split: no validation photo is trained on.
      assert sample_scenes.sample_split(scene) == split
      assert input_pipeline.text(record['ev_tag']) == ''
  # The stored grid is the one drawn for the file, and the input is its
  # render.
  folder = tmp_path / 'raws'
  paths = {p.stem: p for p in sample_scenes.write_sample_raws(folder)}
  record = records['validation'][0]
  scene = input_pipeline.text(record['scene'])
  image = raw_render.decode_raw(paths[scene])
  index = int(record['map_index'])
  drawn = mixed_exposure.draw_maps(
      image.height, image.width, 2,
      mixed_exposure.content_seed(paths[scene]))[index]
  np.testing.assert_array_equal(record['ev_map'], drawn)
  np.testing.assert_array_equal(image_codec.decode_image(record['input']),
                                mixed_exposure.render(image, record['ev_map']))
  np.testing.assert_array_equal(image_codec.decode_image(record['target']),
                                raw_render.expose(image, 0.0))


def test_cli_writes_mixed_renders_and_maps_and_resumes(shared_fixture,
                                                       tmp_path):
  raw = shared_fixture(RAW)
  out = tmp_path / 'out'
  summary = render_raw.render_files([raw], out, (-1.0, 0.0), mixed=2,
                                    workers=1, progress=False)
  assert summary.rendered and not summary.failed
  image = _decode(raw)
  grids = mixed_exposure.draw_maps(image.height, image.width, 2,
                                   mixed_exposure.content_seed(raw))
  for index, grid in enumerate(grids):
    np.testing.assert_array_equal(
        np.load(out / f'kodak_dc50_mixed{index}_ev.npy'), grid)
    np.testing.assert_array_equal(
        image_codec.read_image(out / f'kodak_dc50_mixed{index}.png'),
        mixed_exposure.render(image, grid))
  again = render_raw.render_files([raw], out, (-1.0, 0.0), mixed=2,
                                  workers=1, progress=False)
  assert again.skipped and not again.rendered
  with pytest.raises(render_raw.RenderInputError, match='include 0'):
    render_raw.render_files([raw], tmp_path / 'o2', (-1.0,), mixed=1,
                            workers=1, progress=False)


def test_region_protocol_scores_inside_each_region(tmp_path):
  rng = np.random.default_rng(0)
  target = rng.integers(0, 256, (40, 52, 3), np.uint8)
  output = np.clip(target.astype(int) + rng.integers(-30, 31, target.shape),
                   0, 255).astype(np.uint8)
  ev_map = np.linspace(-2, 2, 52)[None].repeat(40, 0)
  pair = input_pipeline.EvalPair('x_mixed0', '', target, target, ev_map=ev_map)

  def correct(pair, protocol):
    prepared = protocol.prepare(pair, None)
    return (prepared.shown_input, output, prepared.target, (),
            prepared.regions)

  report, _ = evaluation.evaluate([pair], correct, [protocols.MIXED_REGIONS])
  result = report['mixed_regions']['all']
  under, over = ev_map < -0.5, ev_map > 0.5
  for name, mask in (('under', under), ('over', over)):
    mse = np.mean((output[mask].astype(float) - target[mask]) ** 2)
    assert result[f'psnr_{name}'] == pytest.approx(10 * np.log10(255**2 / mse))
    assert result[f'identity_psnr_{name}'] == float('inf')
  # SSIM inside a region: scikit-image's Gaussian SSIM map (interior
  # windows are the 'valid' ones), averaged over channels and the region.
  ssim_map = np.mean([metrics.structural_similarity(
      output[..., c], target[..., c], data_range=255, gaussian_weights=True,
      sigma=1.5, use_sample_covariance=False, full=True)[1]
                      for c in range(3)], axis=0)[5:-5, 5:-5]
  assert result['ssim_under'] == pytest.approx(
      ssim_map[under[5:-5, 5:-5]].mean(), abs=1e-5)
  assert result['ssim_over'] == pytest.approx(
      ssim_map[over[5:-5, 5:-5]].mean(), abs=1e-5)
  assert result['ssim_under'] != pytest.approx(result['ssim'], abs=1e-6)
  plain = input_pipeline.EvalPair('y', '', target, target)
  with pytest.raises(ValueError, match='has none: use it on mixed_exposure'):
    protocols.MIXED_REGIONS.prepare(plain, None)
