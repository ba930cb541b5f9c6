"""Evaluation metrics and reports: PSNR/SSIM per EV tag, JSON and a table.

Metrics are computed on uint8 RGB images, as the papers report them: PSNR on
[0, 255]; SSIM with an 11x11 Gaussian window (sigma 1.5) on the three RGB
channels, 'valid' windows only (scikit-image/MATLAB style; SSIM variants
differ by up to ~0.01, so every report names the one it used). Every report
also scores the identity baseline (the input itself as the output), the bar
any corrector must clear.
"""

import collections
import json
import math
import os
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from expcorr_jax import input_pipeline
from expcorr_jax import ssim as ssim_lib

SSIM_VARIANT = 'gaussian11_sigma1.5_rgb_valid'


def psnr(output: np.ndarray, target: np.ndarray) -> float:
  """PSNR in dB of two uint8 images (inf when identical)."""
  mse = np.mean((output.astype(np.float64) - target.astype(np.float64))**2)
  return float('inf') if mse == 0 else float(10 * np.log10(255.0**2 / mse))


@jax.jit
def _ssim_uint8(output, target):
  return ssim_lib.ssim(output.astype(jnp.float32), target.astype(jnp.float32),
                       max_val=255.0, padding='valid')


def ssim(output: np.ndarray, target: np.ndarray) -> float:
  with jax.default_matmul_precision('highest'):
    return float(_ssim_uint8(output, target))


def _mean(values: list[float]) -> float:
  return float(np.mean(values)) if values else float('nan')


def evaluate(pairs: Iterable[input_pipeline.EvalPair],
             correct: Callable[[input_pipeline.EvalPair, str],
                               tuple[np.ndarray, np.ndarray, np.ndarray]],
             protocols: Iterable[str], *, num_grid_images: int = 0,
             grid_reference: np.ndarray | None = None) -> tuple[dict, list]:
  """Scores `correct` on every pair under each protocol.

  Args:
    pairs: evaluation pairs (input, target, EV tag).
    correct: (pair, protocol) -> uint8 (input, output, target) as the
      protocol defines them (resizing, rounding).
    protocols: protocol names.
    num_grid_images: how many pairs to keep for an image grid.
    grid_reference: the reference image to show in the grid, if any.

  Returns:
    (report, grid_rows): the report maps protocol -> {'per_ev': {tag:
    {psnr, ssim, identity_psnr, identity_ssim, count}}, 'all': {...}};
    grid_rows are lists of images (input, output, target[, reference]).
  """
  protocols = list(protocols)
  scores = {p: collections.defaultdict(lambda: collections.defaultdict(list))
            for p in protocols}
  grid_rows = []
  for pair in pairs:
    for protocol in protocols:
      image_in, output, target = correct(pair, protocol)
      by_tag = scores[protocol][pair.ev_tag]
      by_tag['psnr'].append(psnr(output, target))
      by_tag['ssim'].append(ssim(output, target))
      by_tag['identity_psnr'].append(psnr(image_in, target))
      by_tag['identity_ssim'].append(ssim(image_in, target))
      if protocol == protocols[0] and len(grid_rows) < num_grid_images:
        row = [image_in, output, target]
        if grid_reference is not None:
          row.append(grid_reference)
        grid_rows.append(row)
  report = {}
  for protocol, by_tag in scores.items():
    per_ev = {}
    every = collections.defaultdict(list)
    for tag in sorted(by_tag, key=_tag_order):
      per_ev[tag] = {name: _mean(values) for name, values in by_tag[tag].items()}
      per_ev[tag]['count'] = len(by_tag[tag]['psnr'])
      for name, values in by_tag[tag].items():
        every[name].extend(values)
    summary = {name: _mean(values) for name, values in every.items()}
    summary['count'] = len(every['psnr'])
    report[protocol] = {'per_ev': per_ev, 'all': summary}
  return report, grid_rows


def _tag_order(tag: str):
  from data_prep import ev_tags  # pylint: disable=g-import-not-at-top
  try:
    return (0, ev_tags.tag_to_ev(tag), tag)
  except ValueError:
    return (1, 0.0, tag)


def format_table(report: dict) -> str:
  """A readable per-EV table of a report."""
  lines = []
  for protocol, result in report.items():
    lines.append(f'protocol {protocol} (SSIM: {SSIM_VARIANT})')
    lines.append(f'{"EV":>6} {"n":>4} {"PSNR":>8} {"SSIM":>7} '
                 f'{"id PSNR":>8} {"id SSIM":>8}')
    rows = list(result['per_ev'].items()) + [('all', result['all'])]
    for tag, row in rows:
      lines.append(f'{tag:>6} {row["count"]:>4} {row["psnr"]:>8.3f} '
                   f'{row["ssim"]:>7.4f} {row["identity_psnr"]:>8.3f} '
                   f'{row["identity_ssim"]:>8.4f}')
  return '\n'.join(lines)


def write_report(report: dict, path: str, **extra) -> None:
  """Writes the report as JSON atomically (NaN/inf written as strings)."""
  def clean(value):
    if isinstance(value, dict):
      return {k: clean(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
      return str(value)
    return value
  payload = dict(extra, ssim_variant=SSIM_VARIANT, results=clean(report))
  temporary = f'{path}.tmp'
  with open(temporary, 'w') as f:
    json.dump(payload, f, indent=2)
  os.replace(temporary, path)


def image_grid(rows: list[list[np.ndarray]], height: int = 192) -> np.ndarray:
  """Tiles rows of images, each resized to `height`, into one uint8 image."""
  rendered = []
  for row in rows:
    tiles = []
    for image in row:
      if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
      width = max(1, round(image.shape[1] * height / image.shape[0]))
      tiles.append(np.asarray(Image.fromarray(image).resize(
          (width, height), Image.BILINEAR)))
    rendered.append(np.concatenate(tiles, axis=1))
  width = max(r.shape[1] for r in rendered)
  rendered = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)))
              for r in rendered]
  return np.concatenate(rendered, axis=0)
