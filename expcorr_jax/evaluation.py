"""Evaluation metrics and reports: PSNR/SSIM/LPIPS per EV tag and group.

Metrics are computed on uint8 RGB images, as the papers report them:
- PSNR on RGB [0, 255].
- SSIM with an 11x11 Gaussian window (sigma 1.5), 'valid' windows only
  (MATLAB / cv2.filter2D + [5:-5] crop style, which the RECNet and FECNet
  evaluation code use), on the three RGB channels by default, or on the
  grayscale image (BT.601 luma rounded to integers) where the protocol says so.
  SSIM variants differ by up to ~0.01, so every report names the one each
  protocol used.
- LPIPS (VGG, v0.1 linear weights; see `metrics/lpips.py`) where the protocol
  asks.

What each protocol feeds the model and measures is its `Protocol`
(`tasks/contract.py`; shared ones in `protocols.py`, a method's own in its
task). Every report also scores the identity baseline (the input itself as
the output), the bar any corrector must clear, and summarises per EV tag, per
exposure group ('under' / 'over', see `exposure_group`) and over 'all'.

One code path scores a method for training's periodic evaluation and for
any other caller: `pair_corrector` turns a task, its network and params into
the (pair, protocol) -> uint8 (input, output, target) function that
`evaluate` scores.
"""

import collections
import csv
import functools
import json
import math
import os
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import tqdm

from data_prep import image_codec
from expcorr_jax import distributed
from expcorr_jax import input_pipeline
from expcorr_jax import pixels
from expcorr_jax.metrics import ssim as ssim_lib
from expcorr_jax.tasks import contract

SSIM_VARIANTS = {
    'rgb': 'gaussian11_sigma1.5_rgb_valid',
    'gray': 'gaussian11_sigma1.5_gray-bt601-rounded_valid',
}
SSIM_VARIANT = SSIM_VARIANTS['rgb']  # The default.
GROUPS = ('under', 'over')


def psnr(output: np.ndarray, target: np.ndarray) -> float:
  """PSNR in dB of two uint8 images (inf when identical)."""
  mse = np.mean((output.astype(np.float64) - target.astype(np.float64))**2)
  return float('inf') if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def to_gray(image: np.ndarray) -> np.ndarray:
  """uint8 RGB -> uint8 luma, round(0.299 R + 0.587 G + 0.114 B) (BT.601)."""
  luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  return np.clip(np.round(luma), 0, 255).astype(np.uint8)


@jax.jit
def _ssim_uint8(output, target):
  return ssim_lib.ssim(output.astype(jnp.float32), target.astype(jnp.float32),
                       max_val=255.0, padding='valid')


def ssim(output: np.ndarray, target: np.ndarray, color: str = 'rgb') -> float:
  """SSIM of two uint8 RGB images; `color` 'rgb' or 'gray' (see module)."""
  if color == 'gray':
    output, target = to_gray(output), to_gray(target)
  elif color != 'rgb':
    raise ValueError(f"color must be 'rgb' or 'gray', got {color!r}")
  with jax.default_matmul_precision('highest'):
    return float(_ssim_uint8(output, target))


def exposure_group(tag: str) -> str | None:
  """'under', 'over' or None (no group) for an EV tag, as the papers group.

  MSEC (and multi-exposure pairs): negative EVs are under-exposed; 0 and
  positive EVs are over-exposed (MSEC's convention: its EV 0 renders count
  as over). SICE: 'low' / 'over'. Untagged inputs (LCDP) have no group.
  """
  from data_prep import ev_tags  # pylint: disable=g-import-not-at-top
  if tag == 'low':
    return 'under'
  if tag == 'over':
    return 'over'
  try:
    ev = ev_tags.tag_to_ev(tag)
  except ValueError:
    return None
  return 'under' if ev < 0 else 'over'


@functools.lru_cache(maxsize=1)
def _lpips_metric():
  from expcorr_jax.metrics import lpips as lpips_lib  # pylint: disable=g-import-not-at-top
  return lpips_lib.LPIPS()


def _mean(values: list[float]) -> float:
  return float(np.mean(values)) if values else float('nan')


def _summary(scores: dict[str, list[float]]) -> dict:
  summary = {name: _mean(values) for name, values in scores.items()}
  summary['count'] = len(scores['psnr'])
  return summary


def load_reference(config) -> np.ndarray:
  """The fixed evaluation reference, `config.eval.reference`, as float32.

  'sample' is a well-exposed frame of the embedded sample; anything else is
  an image path. Methods that take a reference (`Task.needs_reference`)
  correct every evaluation input towards it.
  """
  if config.eval.reference == 'sample':
    from data_prep import sample_scenes  # pylint: disable=g-import-not-at-top
    image = sample_scenes.well_exposed_reference()
  else:
    from data_prep import image_codec  # pylint: disable=g-import-not-at-top
    image = image_codec.read_image(config.eval.reference)
  return pixels.to_float(image)


# (pair, protocol) -> uint8 (shown input, output, target): what is scored.
CorrectPair = Callable[[input_pipeline.EvalPair, contract.Protocol],
                       tuple[np.ndarray, np.ndarray, np.ndarray]]

_CORRECTIONS: list[Callable] = []  # Every jitted correction made so far.


@functools.lru_cache(maxsize=None)
def _jitted_correction(task: contract.Task, model: Any) -> Callable:
  jitted = jax.jit(functools.partial(task.apply_correction, model))
  _CORRECTIONS.append(jitted)
  return jitted


def compiled_corrections() -> list[Callable]:
  """The jitted corrections evaluation made (for counting compiles)."""
  return list(_CORRECTIONS)


class PairCorrector:
  """(pair, protocol) -> uint8 (input, output, target), one pair or many.

  `correct_many` groups the pairs whose prepared images share a size and
  runs each group in batches of one image per local device (the batch is
  split over the devices). A short batch is padded with copies of its last
  image, so every call for a size has one shape and each distinct size
  compiles once per protocol; on one device a batch is one image.
  """

  def __init__(self, task: contract.Task, model: Any, params: Any,
               reference: np.ndarray | None = None,
               save_dir: str | None = None):
    """See `pair_corrector`."""
    devices = jax.local_devices()
    mesh = jax.sharding.Mesh(np.asarray(devices), ('data',))
    self._batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
        'data'))
    self._replicated = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec())
    self._params = jax.device_put(params, self._replicated)
    self._correct = _jitted_correction(task, model)
    self._reference = reference
    self._save_dir = save_dir
    self.batch_size = len(devices)

  def __call__(self, pair: input_pipeline.EvalPair, protocol: contract.Protocol
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return self.correct_many([pair], protocol)[0]

  def correct_many(self, pairs: Sequence[input_pipeline.EvalPair],
                   protocol: contract.Protocol
                   ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`self(pair, protocol)` of each pair, batched by size."""
    prepared = [protocol.prepare(pair, self._reference) for pair in pairs]
    groups = collections.defaultdict(list)
    for index, item in enumerate(prepared):
      reference_shape = (None if item.reference is None
                         else item.reference.shape)
      groups[item.model_input.shape, reference_shape].append(index)
    outputs = [None] * len(prepared)
    for indices in groups.values():
      for start in range(0, len(indices), self.batch_size):
        chunk = indices[start:start + self.batch_size]
        padded = chunk + chunk[-1:] * (self.batch_size - len(chunk))
        images = np.stack([prepared[i].model_input for i in padded])
        corrected = np.asarray(self._correct(
            self._params, jax.device_put(images, self._batch),
            self._references([prepared[i] for i in padded])))
        for position, index in enumerate(chunk):
          outputs[index] = corrected[position]
    results = [(item.shown_input, protocol.quantise(output), item.target)
               for item, output in zip(prepared, outputs)]
    if self._save_dir is not None:
      folder = os.path.join(self._save_dir, protocol.name)
      os.makedirs(folder, exist_ok=True)
      for pair, (_, output, _) in zip(pairs, results):
        image_codec.write_png(os.path.join(folder, f'{pair.name}.png'), output)
    return results

  def _references(self, prepared: Sequence[contract.PreparedPair]):
    """None, one reference for the batch (1HWC), or one per image (NHWC)."""
    first = prepared[0].reference
    if first is None:
      return None
    if all(np.array_equal(item.reference, first) for item in prepared[1:]):
      return jax.device_put(first[None], self._replicated)
    return jax.device_put(np.stack([item.reference for item in prepared]),
                          self._batch)


def pair_corrector(task: contract.Task, model: Any, params: Any,
                   reference: np.ndarray | None = None,
                   save_dir: str | None = None) -> PairCorrector:
  """(pair, protocol) -> uint8 (input, output, target) for `evaluate`.

  Args:
    task: the method.
    model: its network.
    params: the params `task.correct` runs with (for ERL stage 2 those of
      `task.correction_params`).
    reference: float32 HxWx3 for methods that take one, else None.
    save_dir: if set, every scored output is also written to
      `<save_dir>/<protocol>/<pair name>.png`.
  """
  return PairCorrector(task, model, params, reference, save_dir)


# Per-pair scores, in this order wherever they are packed into an array.
PAIR_METRICS = ('psnr', 'ssim', 'identity_psnr', 'identity_ssim', 'lpips',
                'identity_lpips')


class PairScores(NamedTuple):
  """One pair's scores: {protocol name: {metric: value}} (`PAIR_METRICS`)."""
  name: str
  ev_tag: str
  scores: dict[str, dict[str, float]]


def _lpips_per_protocol(protocols: Sequence[contract.Protocol],
                        lpips: bool | None) -> dict[str, bool]:
  return {p.name: p.lpips if lpips is None else lpips for p in protocols}


def score_pairs(pairs: Iterable[input_pipeline.EvalPair],
                correct: CorrectPair,
                protocols: Sequence[contract.Protocol], *,
                num_grid_images: int = 0,
                grid_reference: np.ndarray | None = None,
                lpips: bool | None = None
                ) -> tuple[list[PairScores], list]:
  """Scores each pair under each protocol (see `evaluate` for the args).

  Returns:
    (rows, grid_rows): one `PairScores` per pair, in order, with the metrics
    of `PAIR_METRICS` each protocol computes; and the image-grid rows of the
    first `num_grid_images` pairs.
  """
  protocols = list(protocols)
  with_lpips = _lpips_per_protocol(protocols, lpips)
  rows, grid_rows = [], []
  for chunk in _chunks(pairs, correct):
    corrected = {protocol.name: _correct_chunk(correct, chunk, protocol)
                 for protocol in protocols}
    for position, pair in enumerate(chunk):
      rows.append(PairScores(pair.name, pair.ev_tag, {}))
      for protocol in protocols:
        image_in, output, target = corrected[protocol.name][position]
        rows[-1].scores[protocol.name] = _scores(
            image_in, output, target, protocol.ssim_color,
            with_lpips[protocol.name])
        if protocol is protocols[0] and len(grid_rows) < num_grid_images:
          row = [image_in, output, target]
          if grid_reference is not None:
            row.append(grid_reference)
          grid_rows.append(row)
  return rows, grid_rows


# Pairs read ahead per local device, so batches of one size can form.
_PAIRS_PER_DEVICE = 4


def _chunks(pairs: Iterable[input_pipeline.EvalPair], correct
            ) -> Iterator[list[input_pipeline.EvalPair]]:
  """The pairs in consecutive lists, long enough to batch over devices."""
  size = _PAIRS_PER_DEVICE * getattr(correct, 'batch_size', 1)
  chunk = []
  for pair in pairs:
    chunk.append(pair)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def _correct_chunk(correct, chunk, protocol):
  """`correct` on each pair of `chunk`; batched where it can (PairCorrector)."""
  if isinstance(correct, PairCorrector):
    return correct.correct_many(chunk, protocol)
  return [correct(pair, protocol) for pair in chunk]


def _scores(image_in: np.ndarray, output: np.ndarray, target: np.ndarray,
            color: str, with_lpips: bool) -> dict[str, float]:
  """The `PAIR_METRICS` of one corrected pair (LPIPS only if asked)."""
  values = {'psnr': psnr(output, target),
            'ssim': ssim(output, target, color),
            'identity_psnr': psnr(image_in, target),
            'identity_ssim': ssim(image_in, target, color)}
  if with_lpips:
    distances = _lpips_metric()(np.stack([output, image_in]),
                                np.stack([target, target]))
    values['lpips'] = float(distances[0])
    values['identity_lpips'] = float(distances[1])
  return values


def summarise(rows: Sequence[PairScores],
              protocols: Sequence[contract.Protocol], *,
              lpips: bool | None = None) -> dict:
  """The report of per-pair `rows` (see `evaluate`'s Returns)."""
  with_lpips = _lpips_per_protocol(protocols, lpips)
  report = {}
  for protocol in protocols:
    by_tag = collections.defaultdict(lambda: collections.defaultdict(list))
    for row in rows:
      for name, value in row.scores[protocol.name].items():
        by_tag[row.ev_tag][name].append(value)
    result = {'per_ev': {}}
    merged = {group: collections.defaultdict(list)
              for group in GROUPS + ('all',)}
    for tag in sorted(by_tag, key=_tag_order):
      result['per_ev'][tag] = _summary(by_tag[tag])
      group = exposure_group(tag)
      for name, values in by_tag[tag].items():
        merged['all'][name].extend(values)
        if group:
          merged[group][name].extend(values)
    for group in GROUPS:
      if merged[group]:
        result[group] = _summary(merged[group])
    result['all'] = (_summary(merged['all']) if merged['all'] else
                     {'psnr': float('nan'), 'ssim': float('nan'),
                      'identity_psnr': float('nan'),
                      'identity_ssim': float('nan'), 'count': 0})
    result['ssim_variant'] = SSIM_VARIANTS[protocol.ssim_color]
    result['lpips_variant'] = (_lpips_variant() if with_lpips[protocol.name]
                               else None)
    report[protocol.name] = result
  return report


def evaluate(pairs: Iterable[input_pipeline.EvalPair],
             correct: CorrectPair,
             protocols: Sequence[contract.Protocol], *,
             num_grid_images: int = 0,
             grid_reference: np.ndarray | None = None,
             lpips: bool | None = None) -> tuple[dict, list]:
  """Scores `correct` on every pair under each protocol, in this process.

  Args:
    pairs: evaluation pairs (input, target, EV tag).
    correct: (pair, protocol) -> uint8 (input, output, target) as the
      protocol defines them (resizing, rounding); `pair_corrector` makes one
      for a method.
    protocols: the protocols (`protocols.resolve` finds them by name).
    num_grid_images: how many pairs to keep for an image grid.
    grid_reference: the reference image to show in the grid, if any.
    lpips: None: LPIPS where the protocol asks for it; True / False: for
      every protocol / for none.

  Returns:
    (report, grid_rows): the report maps protocol name -> {'per_ev': {tag:
    {psnr, ssim, identity_psnr, identity_ssim[, lpips, identity_lpips],
    count}}, 'under': {...}, 'over': {...} (groups with members only),
    'all': {...}, 'ssim_variant': str, 'lpips_variant': str or None};
    grid_rows are lists of images (input, output, target[, reference]).
  """
  protocols = list(protocols)
  rows, grid_rows = score_pairs(pairs, correct, protocols,
                                num_grid_images=num_grid_images,
                                grid_reference=grid_reference, lpips=lpips)
  return summarise(rows, protocols, lpips=lpips), grid_rows


def evaluate_source(pairs_source, correct: CorrectPair,
                    protocols: Sequence[contract.Protocol], *,
                    limit: int | None = None, num_grid_images: int = 0,
                    grid_reference: np.ndarray | None = None,
                    lpips: bool | None = None,
                    progress: bool = False) -> tuple[dict, list, list]:
  """`evaluate` on the first `limit` pairs of a source, split over processes.

  Process i scores pairs i, i + n, i + 2n, ... of the n processes; the
  per-pair scores are gathered so that every process returns the report a
  single process would compute (the same numbers, averaged in the same
  order). The grid holds the first of this process's pairs. Every process
  must call it (it ends with a collective gather).

  Returns:
    (report, grid_rows, rows): as `evaluate`, plus every pair's
    `PairScores` in the source's order.
  """
  protocols = list(protocols)
  count = input_pipeline.num_eval_pairs(pairs_source, limit)
  process, processes = jax.process_index(), jax.process_count()
  own = range(process, count, processes)
  pairs = (input_pipeline.read_eval_pair(pairs_source, i) for i in own)
  if progress:
    pairs = tqdm.tqdm(pairs, total=len(own), unit='pair',
                      desc=f'Evaluating (process {process})')
  local_rows, grid_rows = score_pairs(
      pairs, correct, protocols, num_grid_images=num_grid_images,
      grid_reference=grid_reference, lpips=lpips)
  packed = np.full((count, len(protocols), len(PAIR_METRICS)), np.nan)
  for index, row in zip(own, local_rows):
    for p, protocol in enumerate(protocols):
      for m, metric in enumerate(PAIR_METRICS):
        packed[index, p, m] = row.scores[protocol.name].get(metric, np.nan)
  gathered = distributed.gather_from_processes(packed)
  owner = np.arange(count) % processes
  packed = gathered[owner, np.arange(count)]
  with_lpips = _lpips_per_protocol(protocols, lpips)
  metrics = {protocol.name: PAIR_METRICS if with_lpips[protocol.name]
             else PAIR_METRICS[:4] for protocol in protocols}
  # This process's pairs were read already; only the others' labels are
  # read again (names and tags only, no decoding).
  labels = {index: (row.name, row.ev_tag)
            for index, row in zip(own, local_rows)}
  rows = []
  for index in range(count):
    scores = {protocol.name: {
        metric: float(packed[index, p, PAIR_METRICS.index(metric)])
        for metric in metrics[protocol.name]}
              for p, protocol in enumerate(protocols)}
    name, tag = (labels[index] if index in labels else
                 input_pipeline.eval_pair_label(pairs_source, index))
    rows.append(PairScores(name, tag, scores))
  return summarise(rows, protocols, lpips=lpips), grid_rows, rows


def write_csv(rows: Sequence[PairScores], path: str) -> None:
  """One CSV row per pair and protocol (name, EV tag, PSNR, SSIM, LPIPS...).

  For finding failure cases and for significance tests; written atomically.
  Metrics a protocol did not compute are empty.
  """
  temporary = f'{path}.tmp'
  with open(temporary, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(('name', 'ev_tag', 'protocol') + PAIR_METRICS)
    for row in rows:
      for protocol, scores in row.scores.items():
        writer.writerow((row.name, row.ev_tag, protocol) + tuple(
            repr(scores[m]) if m in scores else '' for m in PAIR_METRICS))
  os.replace(temporary, path)


def _lpips_variant() -> str:
  from expcorr_jax.metrics import lpips as lpips_lib  # pylint: disable=g-import-not-at-top
  return lpips_lib.VARIANT


def _tag_order(tag: str):
  from data_prep import ev_tags  # pylint: disable=g-import-not-at-top
  try:
    return (0, ev_tags.tag_to_ev(tag), tag)
  except ValueError:
    return (1, 0.0, tag)


def format_table(report: dict) -> str:
  """A readable table of a report: per EV tag, then the groups and 'all'."""
  lines = []
  for protocol, result in report.items():
    variant = result.get('ssim_variant', SSIM_VARIANT)
    header = f'protocol {protocol} (SSIM: {variant}'
    if result.get('lpips_variant'):
      header += f'; LPIPS: {result["lpips_variant"]}'
    lines.append(header + ')')
    rows = list(result['per_ev'].items()) + [
        (name, result[name]) for name in GROUPS + ('all',) if name in result]
    has_lpips = 'lpips' in result['all']
    title = (f'{"EV":>6} {"n":>4} {"PSNR":>8} {"SSIM":>7} {"id PSNR":>8} '
             f'{"id SSIM":>8}')
    lines.append(title + (f' {"LPIPS":>7} {"id LPIPS":>8}' if has_lpips
                          else ''))
    for tag, row in rows:
      line = (f'{tag:>6} {row["count"]:>4} {row["psnr"]:>8.3f} '
              f'{row["ssim"]:>7.4f} {row["identity_psnr"]:>8.3f} '
              f'{row["identity_ssim"]:>8.4f}')
      if has_lpips:
        line += f' {row["lpips"]:>7.4f} {row["identity_lpips"]:>8.4f}'
      lines.append(line)
  return '\n'.join(lines)


def write_report(report: dict, path: str, **extra) -> None:
  """Writes the report as JSON atomically (NaN/inf written as strings).

  Besides each protocol's own 'ssim_variant', the top level names the SSIM
  variant of every protocol ('ssim_variants') and, when all share one,
  'ssim_variant'.
  """
  def clean(value):
    if isinstance(value, dict):
      return {k: clean(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
      return str(value)
    return value
  variants = {protocol: result.get('ssim_variant', SSIM_VARIANT)
              for protocol, result in report.items()}
  payload = dict(extra, ssim_variants=variants)
  if len(set(variants.values())) <= 1:
    payload['ssim_variant'] = next(iter(variants.values()), SSIM_VARIANT)
  payload['results'] = clean(report)
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
      image = pixels.to_uint8(image)
      width = max(1, round(image.shape[1] * height / image.shape[0]))
      tiles.append(np.asarray(Image.fromarray(image).resize(
          (width, height), Image.BILINEAR)))
    rendered.append(np.concatenate(tiles, axis=1))
  width = max(r.shape[1] for r in rendered)
  rendered = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)))
              for r in rendered]
  return np.concatenate(rendered, axis=0)
