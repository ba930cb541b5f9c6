r"""UEC inference speed: ms, megapixels/s and the share of the matmul peak.

  python benchmarks/uec_inference.py [--sizes=1080p,4k] [--rounds=5] \
      [--dtype=float32|bfloat16] [--tiles=2048,8192,16384] [--nonaive]

Runs on JAX's default device (CPU, GPU or TPU) and times the official
three-pass inference of one image towards one reference, as
`UEC.__call__` under `jax.jit`, inputs already on the device:

  naive: `UEC(pixel_tile='off')`, the layer-by-layer corrector over the
    whole image (the straightforward port);
  fast: `UEC()`, the default (tiles on a CPU, see models/uec.py);
  tile=N: `UEC(pixel_tile=N)`, with --tiles, to choose the CPU tile size.

UEC's cost is fixed by its size: 3 passes x 2 x (3*64 + 64*64 + 64*3) =
26,880 FLOPs per pixel (the encoder on 256-high copies adds ~1%, not
counted), so FLOP/s = 26,880 * pixels / seconds. The matmul peak is measured
in the same process, on the same device and threads: a float32 jnp.dot of two
N x N matrices (N = 2048 on a CPU, 8192 elsewhere) at HIGHEST precision, the
best of all its runs. Each round times the peak matmul, then every variant
once, so that drifting load on a shared machine hits all alike; the table
gives median and best times, the fraction of the peak reached by the best
time, and the median over rounds of the fraction within the same round
("paired"), the figure least sensitive to other load.

--dtype=bfloat16 adds a variant with bfloat16 matmul operands
(`corrector_dtype`, for GPUs), reports its largest absolute difference from
the float32 result and whether it is within 1/255, and its fraction of the
bfloat16 matmul peak as well.

The image is the golden test input of ../shared/fixtures (a real photo,
resized) with the official exposure-errors checkpoint when those are present,
else a smooth random image and random weights.
"""

import os
import pathlib
import statistics
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from expcorr_jax import pixels
from expcorr_jax.models import uec
import timing  # benchmarks/timing.py; this folder is on sys.path.

_SIZES = flags.DEFINE_list('sizes', ['1080p', '4k'],
                           'Image sizes: 1080p, 4k or HxW (e.g. 720x1280).')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timed runs per variant.',
                               lower_bound=1)
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'bfloat16 adds a bfloat16-matmul variant.')
_TILES = flags.DEFINE_list('tiles', [], 'Extra variants UEC(pixel_tile=N).')
_NAIVE = flags.DEFINE_boolean('naive', True, "Time UEC(pixel_tile='off').")
_PEAK_SIZE = flags.DEFINE_integer('peak_size', None,
                                  'N of the N x N peak matmul (default: 2048 '
                                  'on a CPU, 8192 elsewhere).')

FLOPS_PER_PIXEL = 3 * 2 * (3 * 64 + 64 * 64 + 64 * 3)
FIXTURES = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'fixtures'
_TOLERANCE = 1 / 255


def load_inputs(height: int, width: int):
  """(params, image (1, H, W, 3), reference (1, h, w, 3), description)."""
  checkpoint = FIXTURES / 'uec' / 'exposure-errors.pth'
  golden = FIXTURES / 'uec' / 'uec_golden_exposure_errors.npz'
  if checkpoint.exists() and golden.exists():
    data = np.load(golden)
    image = jnp.asarray(pixels.to_float(data['input_0'][None]))
    reference = jnp.asarray(pixels.to_float(data['reference'][None]))
    image = jax.image.resize(image, (1, height, width, 3), 'bilinear')
    return (uec.load_official(checkpoint), jnp.clip(image, 0, 1), reference,
            'golden input_0 resized, official exposure-errors weights')
  rng = np.random.default_rng(0)
  small = rng.random((1, 9, 16, 3)).astype(np.float32)
  image = jax.image.resize(jnp.asarray(small), (1, height, width, 3),
                           'bilinear')
  reference = jnp.full((1, 256, 256, 3), 0.5, jnp.float32)
  params = uec.UEC(pixel_tile='off').init(
      jax.random.key(0), image[:, :64, :64], reference, 1,
      method=uec.UEC.multi_pass)['params']
  return params, image, reference, 'smooth random image, random weights'


def variants(dtype: str) -> dict[str, uec.UEC]:
  models = {}
  if _NAIVE.value:
    models['naive'] = uec.UEC(pixel_tile='off')
  models['fast'] = uec.UEC()
  for tile in _TILES.value:
    models[f'tile={int(tile)}'] = uec.UEC(pixel_tile=int(tile))
  if dtype == 'bfloat16':
    models['fast bf16'] = uec.UEC(corrector_dtype=jnp.bfloat16)
  return models


def benchmark_size(height, width, peaks, dtype) -> list[dict]:
  params, image, reference, source = load_inputs(height, width)
  models = variants(dtype)
  functions = {name: jax.jit(lambda p, x, r, m=model: m.apply({'params': p},
                                                                x, r))
               for name, model in models.items()}
  outputs = {name: np.asarray(f(params, image, reference))  # Compiles.
             for name, f in functions.items()}
  reference_out = outputs['fast']
  flops = FLOPS_PER_PIXEL * height * width
  times = {name: [] for name in functions}
  paired = {name: [] for name in functions}
  for _ in range(_ROUNDS.value):
    for name, f in functions.items():
      peak_name = 'bfloat16' if name.endswith('bf16') else 'float32'
      matmul, operands, peak_flops = peaks[peak_name]['op']
      peak_seconds = min(timing.seconds(matmul, *operands) for _ in range(2))
      peaks[peak_name]['seconds'].append(peak_seconds)
      seconds = timing.seconds(f, params, image, reference)
      times[name].append(seconds)
      paired[name].append((flops / seconds) / (peak_flops / peak_seconds))
  rows = []
  for name in functions:
    rows.append({
        'size': f'{height}x{width}', 'variant': name, 'source': source,
        'median_s': statistics.median(times[name]), 'best_s': min(times[name]),
        'flops': flops, 'paired': statistics.median(paired[name]),
        'peak': 'bfloat16' if name.endswith('bf16') else 'float32',
        'max_diff': float(np.max(np.abs(outputs[name] - reference_out))),
        'naive_median_s': (statistics.median(times['naive'])
                           if 'naive' in times else None),
        'load': os.getloadavg()[0]})
  return rows


def print_table(rows, peaks) -> None:
  peak_rates = {name: peak['op'][2] / min(peak['seconds'])
                for name, peak in peaks.items() if peak['seconds']}
  for name, rate in peak_rates.items():
    print(f'{name} matmul peak ({peaks[name]["size"]}^2, best of '
          f'{len(peaks[name]["seconds"])}): {rate / 1e9:.1f} GFLOP/s')
  print()
  print('| size | variant | median ms | best ms | MP/s | GFLOP/s | '
        'of peak | of peak, paired | vs naive | max diff vs fast | '
        'load 1 min |')
  print('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  for row in rows:
    pixels = row['flops'] / FLOPS_PER_PIXEL
    rate = row['flops'] / row['best_s']
    speedup = (f'{row["naive_median_s"] / row["median_s"]:.1f}x'
               if row['naive_median_s'] else '-')
    print(f'| {row["size"]} | {row["variant"]} | {row["median_s"] * 1e3:.0f}'
          f' | {row["best_s"] * 1e3:.0f} | {pixels / row["best_s"] / 1e6:.1f}'
          f' | {rate / 1e9:.1f} | {rate / peak_rates[row["peak"]]:.2f} | '
          f'{row["paired"]:.2f} | {speedup} | {row["max_diff"]:.1e} | '
          f'{row["load"]:.2f} |')
  for row in rows:
    if row['variant'].endswith('bf16'):
      verdict = 'within' if row['max_diff'] <= _TOLERANCE else 'NOT within'
      print(f'\n{row["size"]} bfloat16: max |bf16 - float32| = '
            f'{row["max_diff"]:.2e}, {verdict} 1/255 = {_TOLERANCE:.2e}')
  print(f'\nInputs: {rows[0]["source"]}. MP/s and GFLOP/s from the best time; '
        f'"of peak" = best GFLOP/s / peak; "paired" = median over rounds of '
        f'the ratio to the peak matmul timed just before; "vs naive" from '
        f'median times. FLOPs: {FLOPS_PER_PIXEL} per pixel.')


def main(argv):
  del argv
  print(timing.describe_machine())
  print(' '.join(['python'] + sys.argv))
  cpu = jax.devices()[0].platform == 'cpu'
  size = _PEAK_SIZE.value or (2048 if cpu else 8192)
  peaks = {'float32': {'op': timing.make_peak(size), 'seconds': [],
                       'size': size}}
  if _DTYPE.value == 'bfloat16':
    peaks['bfloat16'] = {'op': timing.make_peak(size, jnp.bfloat16),
                         'seconds': [],
                         'size': size}
  for peak in peaks.values():
    timing.seconds(*peak['op'][:1], *peak['op'][1])  # Compiles.
  rows = []
  for text in _SIZES.value:
    rows += benchmark_size(*timing.parse_size(text), peaks, _DTYPE.value)
  print_table(rows, peaks)
  load = ' '.join(f'{x:.2f}' for x in os.getloadavg())
  print(f'load average at end: {load}')


if __name__ == '__main__':
  app.run(main)
