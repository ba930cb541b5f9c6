"""Evaluation reports on disk and in the log: JSON, CSV, a table, a grid.

`evaluation.summarise` makes a report (protocol -> per EV tag / group
figures); this module writes it: the JSON that training and the evaluate
CLI save (`write_report`), one CSV row per image and protocol for failure
cases and significance tests (`write_csv`), the readable table of the log
and the `.txt` file (`format_table`), and the image grid of TensorBoard
summaries (`image_grid`). Files are written atomically (a temporary file,
then a rename), so a crash never leaves half a report.
"""

import csv
import io
import json
import math
from typing import Sequence

import numpy as np
from PIL import Image

from data_prep import storage
from expcorr_jax import evaluation
from expcorr_jax import pixels
from expcorr_jax.metrics import image_quality

_TABLE_COLUMNS = (  # (metric, heading, width, decimals)
    ('psnr', 'PSNR', 8, 3), ('ssim', 'SSIM', 7, 4), ('ssim_y', 'SSIM-Y', 7, 4),
    ('identity_psnr', 'id PSNR', 8, 3), ('identity_ssim', 'id SSIM', 8, 4),
    ('lpips', 'LPIPS', 7, 4), ('identity_lpips', 'id LPIPS', 8, 4),
    ('edge_psnr', 'edge PSNR', 9, 3), ('edge_f1', 'edge F1', 7, 4),
    ('identity_edge_psnr', 'id edgePSNR', 11, 3),
    ('identity_edge_f1', 'id edgeF1', 9, 4),
    ('psnr_under', 'PSNR under', 10, 3), ('ssim_under', 'SSIM under', 10, 4),
    ('psnr_over', 'PSNR over', 9, 3), ('ssim_over', 'SSIM over', 9, 4),
    ('identity_psnr_under', 'id PSNR under', 13, 3),
    ('identity_psnr_over', 'id PSNR over', 12, 3),
)


def write_csv(rows: Sequence, path: str) -> None:
  """One CSV row per pair and protocol: name, EV tag, protocol, metrics.

  `rows` are `evaluation.PairScores`. The metric columns are every metric
  any protocol computed, in the order first met; a protocol's row leaves
  the others empty. Values are written exactly (repr), inf as 'inf'.
  """
  columns = []
  for row in rows:
    for scores in row.scores.values():
      columns.extend(name for name in scores if name not in columns)

  text = io.StringIO(newline='')
  writer = csv.writer(text)
  writer.writerow(['name', 'ev_tag', 'protocol'] + columns)
  for row in rows:
    for protocol, scores in row.scores.items():
      writer.writerow([row.name, row.ev_tag, protocol] + [
          repr(scores[name]) if name in scores else '' for name in columns])
  storage.write_text(path, text.getvalue())


def format_table(report: dict) -> str:
  """A readable table of a report: per EV tag, then the groups and 'all'.

  PSNR, SSIM and the identity baseline's, then LPIPS and edge metrics where
  the protocol computed them (per-target figures are in the JSON only).
  """
  lines = []
  for protocol, result in report.items():
    variant = result.get('ssim_variant', image_quality.SSIM_VARIANT)
    header = f'protocol {protocol} (SSIM: {variant}'
    if result.get('lpips_variant'):
      header += f'; LPIPS: {result["lpips_variant"]}'
    if result.get('targets'):
      header += f'; mean over targets {", ".join(result["targets"])}'
    lines.append(header + ')')
    rows = list(result['per_ev'].items()) + [
        (name, result[name]) for name in evaluation.GROUPS + ('all',)
        if name in result]
    columns = [column for column in _TABLE_COLUMNS
               if column[0] in result['all']]
    lines.append(f'{"EV":>6} {"n":>4} ' + ' '.join(
        f'{heading:>{width}}' for _, heading, width, _ in columns))
    for tag, row in rows:
      lines.append(f'{tag:>6} {row["count"]:>4} ' + ' '.join(
          f'{row[metric]:>{width}.{decimals}f}'
          for metric, _, width, decimals in columns))
  return '\n'.join(lines)


def write_report(report: dict, path: str, **extra) -> None:
  """Writes the report as JSON atomically (NaN/inf written as strings).

  Besides each protocol's own 'ssim_variant', the top level names the SSIM
  variant of every protocol ('ssim_variants') and, when all share one,
  'ssim_variant'. `extra` (step, model, dataset, checkpoint...) goes to the
  top level.
  """
  def clean(value):
    if isinstance(value, dict):
      return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
      return [clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
      return str(value)
    return value
  variants = {protocol: result.get('ssim_variant', image_quality.SSIM_VARIANT)
              for protocol, result in report.items()}
  payload = dict(clean(extra), ssim_variants=variants)
  if len(set(variants.values())) <= 1:
    payload['ssim_variant'] = next(iter(variants.values()),
                                   image_quality.SSIM_VARIANT)
  payload['results'] = clean(report)
  storage.write_text(path, json.dumps(payload, indent=2))


def image_grid(rows: list[list[np.ndarray]], height: int = 192) -> np.ndarray:
  """Tiles rows of images, each resized to `height`, into one uint8 image."""
  rendered = []
  for row in rows:
    tiles = []
    for image in row:
      image = pixels.to_uint8(image)
      width = max(1, round(image.shape[1] * height / image.shape[0]))
      tiles.append(np.asarray(Image.fromarray(image).resize(
          (width, height), Image.BILINEAR)))
    rendered.append(np.concatenate(tiles, axis=1))
  width = max(r.shape[1] for r in rendered)
  rendered = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)))
              for r in rendered]
  return np.concatenate(rendered, axis=0)
