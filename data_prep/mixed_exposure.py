"""Mixed exposure from one RAW decode: a smooth EV map, rendered exactly.

LCDP-style data (one photo with over- AND under-exposed regions, the task
RECNet is built for) from any RAW file. On the linear decode
(`raw_render.decode_raw`) a spatially varying exposure is exact: each pixel
is multiplied by 2^EV(x, y), clipped at saturation and encoded exactly as a
uniform EV is (`raw_render.encode_exposed`); the target is the EV 0 render of
the same decode.

The EV map. It is smooth, so it is stored compactly as a coarse grid of EVs
(float32) with one node every `step` pixels (step = ceil(max(H, W) / 32));
the full-resolution map is the bilinear interpolation of that grid at the
pixel centres (`expand`). Images are always rendered from the grid as
stored, so the stored grid is the truth. Maps are drawn (`draw_maps`) from a
seeded family in log2 (EV) space: a linear gradient in a random direction
plus 2-4 large Gaussian blobs of random sign, affinely mapped onto the EV
range [lo, hi] (-2.5..+2 by default); a draw is kept only if at least 10% of
the pixels lie below -0.5 EV and 10% above +0.5 EV (both an under- and an
over-exposed region exist), else the next draw is tried. The seed comes from
the RAW file's content (SHA-256), the map index and a user seed, never the
path, so the embedded sample (written to a temporary folder) builds the same
every time. Users may also supply their own grids (`render`).
"""

import hashlib
import math
import os

import numpy as np

from data_prep import raw_render

GRID_NODES = 32  # Nodes along the longer side (plus one).
EV_RANGE = (-2.5, 2.0)
REGION_EV = 0.5  # |EV| beyond which a pixel counts as under / over.
MIN_REGION_FRACTION = 0.10
_MAX_DRAWS = 100
_ROWS_PER_CHUNK = 256  # Rendering works on row bands to bound memory.


def grid_step(height: int, width: int) -> int:
  """Pixels between the grid nodes of an image's EV map."""
  return max(1, math.ceil(max(height, width) / GRID_NODES))


def grid_shape(height: int, width: int) -> tuple[int, int]:
  step = grid_step(height, width)
  return (math.ceil((height - 1) / step) + 1 if height > 1 else 1,
          math.ceil((width - 1) / step) + 1 if width > 1 else 1)


def _axis_weights(size: int, step: int, nodes: int):
  """Per pixel: (left node, right node, right weight) of linear interpolation
  at pixel centres (position (i + 0.5) / step - 0.5 in node units, clamped)."""
  position = np.clip((np.arange(size) + 0.5) / step - 0.5, 0, nodes - 1)
  left = np.minimum(np.floor(position).astype(int), max(nodes - 2, 0))
  right = np.minimum(left + 1, nodes - 1)
  return left, right, position - left


def expand(grid: np.ndarray, height: int, width: int,
           rows: slice = slice(None)) -> np.ndarray:
  """The full-resolution EV map (float64, HxW; or the band `rows`) of a grid
  stored for an image of `height` x `width` (see module)."""
  grid = np.asarray(grid, np.float64)
  step = grid_step(height, width)
  if grid.shape != grid_shape(height, width):
    raise ValueError(f'An EV grid for a {height}x{width} image must be '
                     f'{grid_shape(height, width)}, got {grid.shape}.')
  top, bottom, wy = (a[rows] for a in _axis_weights(height, step,
                                                      grid.shape[0]))
  left, right, wx = _axis_weights(width, step, grid.shape[1])
  upper = grid[top][:, left] * (1 - wx) + grid[top][:, right] * wx
  lower = grid[bottom][:, left] * (1 - wx) + grid[bottom][:, right] * wx
  return upper * (1 - wy[:, None]) + lower * wy[:, None]


def render(image: raw_render.LinearImage, grid: np.ndarray, *, bits: int = 8,
           tone_curve: str = 'none') -> np.ndarray:
  """`image` rendered with the EV map of `grid` (uint8 / uint16 HxWx3)."""
  height, width = image.height, image.width
  max_code = 2**bits - 1
  out = np.empty((height, width, 3), np.uint8 if max_code == 255 else
                 np.uint16)
  levels = raw_render.linear_levels()
  for start in range(0, height, _ROWS_PER_CHUNK):
    rows = slice(start, min(start + _ROWS_PER_CHUNK, height))
    gain = 2.0**expand(grid, height, width, rows)
    out[rows] = raw_render.encode_exposed(
        levels[image.rgb16[rows]], gain[..., None], bits=bits,
        tone_curve=tone_curve)
  return out


def content_seed(path: str | os.PathLike[str], seed: int = 0) -> int:
  """A seed from the file's bytes (not its path) and a user seed."""
  digest = hashlib.sha256()
  # Local by design: the RAW LibRaw decodes (see camera_tags.py).
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  digest.update(int(seed).to_bytes(8, 'little', signed=True))
  return int.from_bytes(digest.digest()[:8], 'little')


def region_fractions(ev_map: np.ndarray) -> tuple[float, float]:
  """(fraction under -REGION_EV, fraction over +REGION_EV) of an EV map."""
  return (float(np.mean(ev_map < -REGION_EV)),
          float(np.mean(ev_map > REGION_EV)))


def _draw_field(rng: np.random.Generator, rows: np.ndarray,
                cols: np.ndarray) -> np.ndarray:
  """One smooth field on the grid nodes, in arbitrary units."""
  y, x = np.meshgrid(rows, cols, indexing='ij')
  angle = rng.uniform(0, 2 * np.pi)
  field = rng.uniform(0.5, 1.5) * (np.cos(angle) * x + np.sin(angle) * y)
  for _ in range(rng.integers(2, 5)):
    cy, cx = rng.uniform(0, 1, 2)
    sigma = rng.uniform(0.15, 0.35)
    field += rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5) * np.exp(
        -((y - cy)**2 + (x - cx)**2) / (2 * sigma**2))
  return field


def draw_maps(height: int, width: int, count: int, seed: int, *,
              ev_range: tuple[float, float] = EV_RANGE) -> list[np.ndarray]:
  """`count` EV grids for an image of `height` x `width` (see module).

  Raises:
    ValueError: the EV range cannot hold both regions, or no draw in
      `_MAX_DRAWS` has them (a degenerate image size).
  """
  lo, hi = ev_range
  if not lo < -REGION_EV < REGION_EV < hi:
    raise ValueError(f'The EV range {ev_range} must reach below '
                     f'{-REGION_EV} and above {REGION_EV}.')
  step = grid_step(height, width)
  shape = grid_shape(height, width)
  scale = max(height, width)
  rows = np.arange(shape[0]) * step / scale  # Node positions, longer side 1.
  cols = np.arange(shape[1]) * step / scale
  maps = []
  for index in range(count):
    rng = np.random.default_rng([seed, index])
    for _ in range(_MAX_DRAWS):
      field = _draw_field(rng, rows, cols)
      low, high = field.min(), field.max()
      if high - low < 1e-6:
        continue
      grid = (lo + (field - low) / (high - low) * (hi - lo)).astype(np.float32)
      under, over = region_fractions(expand(grid, height, width))
      if min(under, over) >= MIN_REGION_FRACTION:
        maps.append(grid)
        break
    else:
      raise ValueError(f'No EV map with both regions for a {height}x{width} '
                       f'image in {_MAX_DRAWS} draws.')
  return maps
