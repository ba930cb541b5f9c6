"""Edge-map metrics: how well a correction keeps the edges of the target.

The UEC paper scores exposure correction by a downstream task: edges are
detected on the corrected image and on its target, and compared (PSNR of
the edge maps, F1 of edge pixels). The paper does not name its detector's
settings, and its figures come from another detector, so these figures
compare methods WITHIN this project, not with the paper's numbers.

The detector here is deterministic and fixed:
- scikit-image's Canny on the BT.601 luma scaled to [0, 1], Gaussian
  sigma `SIGMA`, hysteresis thresholds `LOW_THRESHOLD` / `HIGH_THRESHOLD`
  on the gradient magnitude (absolute values, not quantiles).
- edge PSNR: PSNR of the two binary maps drawn as 0 / 255 uint8 images
  (inf when the maps are identical).
- edge F1 with a matching tolerance: an output edge pixel counts as correct
  (precision) when a target edge pixel lies within `TOLERANCE` pixels
  (Euclidean), and a target edge pixel as found (recall) when an output
  edge pixel lies within it; F1 = 2PR / (P + R). Unlike the BSDS benchmark
  there is no one-to-one matching. F1 is 1 when neither map has an edge and
  0 when only one has.
"""

import numpy as np
from scipy import ndimage
from skimage import feature

from expcorr_jax.metrics import image_quality

SIGMA = 2.0
LOW_THRESHOLD = 0.1
HIGH_THRESHOLD = 0.2
TOLERANCE = 2.0  # Pixels.
METRIC_NAMES = ('edge_psnr', 'edge_f1')
DESCRIPTION = (f'Canny (scikit-image, sigma {SIGMA}, thresholds '
               f'{LOW_THRESHOLD}/{HIGH_THRESHOLD} on luma in [0, 1]); F1 '
               f'within {TOLERANCE:g} px')


def edge_map(image: np.ndarray) -> np.ndarray:
  """Boolean HxW edge map of a uint8 RGB image (see module)."""
  return feature.canny(image_quality.luma(image) / 255.0, sigma=SIGMA,
                       low_threshold=LOW_THRESHOLD,
                       high_threshold=HIGH_THRESHOLD)


def _within_tolerance(edges: np.ndarray) -> np.ndarray:
  """Pixels at most `TOLERANCE` from an edge pixel of `edges`."""
  return ndimage.distance_transform_edt(~edges) <= TOLERANCE


def edge_f1(found: np.ndarray, expected: np.ndarray) -> float:
  """F1 of edge map `found` against `expected` (see module)."""
  if not found.any() and not expected.any():
    return 1.0
  if not found.any() or not expected.any():
    return 0.0
  precision = np.count_nonzero(found & _within_tolerance(expected)) / (
      np.count_nonzero(found))
  recall = np.count_nonzero(expected & _within_tolerance(found)) / (
      np.count_nonzero(expected))
  if precision + recall == 0:
    return 0.0
  return float(2 * precision * recall / (precision + recall))


def edge_scores(output: np.ndarray, target: np.ndarray) -> dict[str, float]:
  """{'edge_psnr', 'edge_f1'} of two uint8 RGB images of one size."""
  found, expected = edge_map(output), edge_map(target)
  as_images = [np.where(edges, 255, 0).astype(np.uint8)
               for edges in (found, expected)]
  return {'edge_psnr': image_quality.psnr(*as_images),
          'edge_f1': edge_f1(found, expected)}
