"""Evaluation metrics and reports: PSNR/SSIM/LPIPS per EV tag and group.

Metrics are computed on uint8 RGB images, as the papers report them:
- PSNR on RGB [0, 255] and SSIM (11x11 Gaussian, 'valid' windows, on RGB or
  on the BT.601 luma as the protocol says): `metrics/image_quality.py`;
  every report names the SSIM variant each protocol used.
- LPIPS (VGG, v0.1 linear weights; see `metrics/lpips.py`) where the protocol
  asks.
- A protocol's own metrics (`Protocol.extra_metrics`, e.g. the edge metrics
  of `metrics/edges.py`), and, for a protocol with several ground truths
  (`Protocol.target_names`, e.g. MSEC's five experts), PSNR and SSIM as
  means over them plus each one's own.

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
import functools
import os
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import jax
import numpy as np
import tqdm

from data_prep import image_codec
from data_prep import storage
from expcorr_jax import corrections
from expcorr_jax import distributed
from expcorr_jax import input_pipeline
from expcorr_jax import pixels
from expcorr_jax.metrics import image_quality
from expcorr_jax.tasks import contract

GROUPS = ('under', 'over')


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
  """The mean of the values that are not NaN (a region metric is NaN for
  an image without that region); NaN if none is."""
  values = [value for value in values if not np.isnan(value)]
  return float(np.mean(values)) if values else float('nan')


def _summary(scores: dict[str, list[float]]) -> dict:
  summary = {name: _mean(values) for name, values in scores.items()}
  summary['count'] = len(scores['psnr'])
  return summary


def load_reference(config) -> np.ndarray:
  """The fixed evaluation reference, `config.eval.reference`, as float32.

  'sample' is a well-exposed frame of the embedded sample; anything else is
  an image path ('~' expanded; a gs:// URL too). Methods that take a
  reference (`Task.needs_reference`) correct every evaluation input towards
  it.

  Raises:
    FileNotFoundError: no such file, naming the setting.
  """
  if config.eval.reference == 'sample':
    from data_prep import sample_scenes  # pylint: disable=g-import-not-at-top
    image = sample_scenes.well_exposed_reference()
  else:
    path = storage.path(config.eval.reference)
    if not path.is_file():
      raise FileNotFoundError(
          f'--config.eval.reference={config.eval.reference}: no such image '
          f'file ({path}). Give an image path, or \'sample\'.')
    image = image_codec.read_image(path)
  return pixels.to_float(image)


# (pair, protocol) -> the uint8 images scored (shown input, output, target
# and any further targets).
CorrectPair = Callable[[input_pipeline.EvalPair, contract.Protocol],
                       contract.ScoredImages]

class PairCorrector:
  """(pair, protocol) -> `ScoredImages`, for one pair or many.

  `correct_many` groups the pairs whose prepared images share a size and
  runs each group in batches of one image per local device (the batch is
  split over the devices). A short batch is padded with copies of its last
  image, so every call for a size has one shape and each distinct size
  compiles once per protocol; on one device a batch is one image.
  """

  def __init__(self, task: contract.Task, model: Any, params: Any,
               reference: np.ndarray | None = None,
               save_dir: str | os.PathLike[str] | None = None):
    """See `pair_corrector`."""
    devices = jax.local_devices()
    mesh = jax.sharding.Mesh(np.asarray(devices), ('data',))
    self._batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
        'data'))
    self._replicated = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec())
    self._params = jax.device_put(params, self._replicated)
    self._task, self._model = task, model
    self._reference = reference
    self._save_dir = save_dir
    self.batch_size = len(devices)

  def __call__(self, pair: input_pipeline.EvalPair, protocol: contract.Protocol
               ) -> contract.ScoredImages:
    return self.correct_many([pair], protocol)[0]

  def correct_many(self, pairs: Sequence[input_pipeline.EvalPair],
                   protocol: contract.Protocol
                   ) -> list[contract.ScoredImages]:
    """`self(pair, protocol)` of each pair, batched by size."""
    prepared = [protocol.prepare(pair, reference=self._reference)
                for pair in pairs]
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
        corrected, _ = corrections.run(
            self._task, self._model, self._params,
            jax.device_put(images, self._batch),
            self._references([prepared[i] for i in padded]))
        corrected = np.asarray(corrected)
        for position, index in enumerate(chunk):
          outputs[index] = corrected[position]
    results = [contract.ScoredImages(item.shown_input,
                                     protocol.quantise(output), item.target,
                                     item.other_targets, item.regions)
               for item, output in zip(prepared, outputs)]
    if self._save_dir is not None:
      folder = storage.path(self._save_dir) / protocol.name
      for pair, result in zip(pairs, results):
        image_codec.write_png(folder / f'{pair.name}.png', result.output)
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
                   save_dir: str | os.PathLike[str] | None = None
                   ) -> PairCorrector:
  """(pair, protocol) -> the `ScoredImages` `evaluate` scores.

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


def metric_names(protocol: contract.Protocol, with_lpips: bool
                 ) -> tuple[str, ...]:
  """The per-pair metrics a protocol computes, in report order.

  PSNR, SSIM (the protocol's variant), `ssim_y` (PyIQA's `ssim`, every
  protocol), LPIPS (if computed), the protocol's `extra_metric_names`,
  `psnr_<target>` / `ssim_<target>` per target of `target_names`; then the
  same for the identity baseline, prefixed 'identity_'.
  """
  own = ['psnr', 'ssim', 'ssim_y'] + (['lpips'] if with_lpips else [])
  own += list(protocol.extra_metric_names)
  own += [f'{metric}_{target}' for target in protocol.target_names
          for metric in ('psnr', 'ssim')]
  own += [f'{metric}_{region}' for region in protocol.region_names
          for metric in ('psnr', 'ssim')]
  return tuple(own + [f'identity_{name}' for name in own])


class PairScores(NamedTuple):
  """One pair's scores: {protocol name: {metric: value}} (`metric_names`)."""
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
    `metric_names` gives for each protocol; and the image-grid rows of the
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
        # A plain (input, output, target) tuple is accepted too.
        images = contract.ScoredImages(*corrected[protocol.name][position])
        rows[-1].scores[protocol.name] = _scores(
            images, protocol, with_lpips[protocol.name])
        if protocol is protocols[0] and len(grid_rows) < num_grid_images:
          row = [images.shown_input, images.output, images.target]
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


def _scores(images: contract.ScoredImages, protocol: contract.Protocol,
            with_lpips: bool) -> dict[str, float]:
  """The `metric_names` of one corrected pair."""
  targets = [images.target] + [image for _, image in images.other_targets]
  if len(targets) != max(1, len(protocol.target_names)):
    raise ValueError(
        f'Protocol {protocol.name!r} scores against {protocol.target_names} '
        f'but was given {len(targets)} target(s).')
  values = {}
  for prefix, candidate in (('', images.output),
                            ('identity_', images.shown_input)):
    psnrs = [image_quality.psnr(candidate, t) for t in targets]
    ssims = [image_quality.ssim(candidate, t, protocol.ssim_color)
             for t in targets]
    values[f'{prefix}psnr'] = float(np.mean(psnrs))
    values[f'{prefix}ssim'] = float(np.mean(ssims))
    values[f'{prefix}ssim_y'] = float(np.mean(
        [image_quality.ssim_y(candidate, t) for t in targets]))
    if protocol.extra_metrics is not None:
      extra = protocol.extra_metrics(candidate, images.target)
      for name in protocol.extra_metric_names:
        values[f'{prefix}{name}'] = float(extra[name])
    for name, p, s in zip(protocol.target_names, psnrs, ssims):
      values[f'{prefix}psnr_{name}'] = p
      values[f'{prefix}ssim_{name}'] = s
    for name, mask in images.regions:
      values[f'{prefix}psnr_{name}'] = image_quality.masked_psnr(
          candidate, images.target, mask)
      values[f'{prefix}ssim_{name}'] = image_quality.masked_ssim(
          candidate, images.target, mask, protocol.ssim_color)
  if with_lpips:
    distances = _lpips_metric()(np.stack([images.output, images.shown_input]),
                                np.stack([images.target, images.target]))
    values['lpips'] = float(distances[0])
    values['identity_lpips'] = float(distances[1])
  return {name: values[name] for name in metric_names(protocol, with_lpips)}


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
    result['all'] = (_summary(merged['all']) if merged['all'] else dict(
        {name: float('nan') for name in metric_names(
            protocol, with_lpips[protocol.name])}, count=0))
    result['ssim_variant'] = image_quality.SSIM_VARIANTS[protocol.ssim_color]
    result['ssim_y_variant'] = image_quality.SSIM_Y_VARIANT
    # Which of the two a paper's SSIM column is, for this protocol.
    result['paper_ssim'] = protocol.paper_ssim
    result['lpips_variant'] = (_lpips_variant() if with_lpips[protocol.name]
                               else None)
    if protocol.target_names:
      result['targets'] = list(protocol.target_names)
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
  with_lpips = _lpips_per_protocol(protocols, lpips)
  columns = [(protocol.name, metric) for protocol in protocols
             for metric in metric_names(protocol, with_lpips[protocol.name])]
  packed = np.full((count, len(columns)), np.nan)
  for index, row in zip(own, local_rows):
    packed[index] = [row.scores[protocol][metric]
                     for protocol, metric in columns]
  gathered = distributed.gather_from_processes(packed)
  owner = np.arange(count) % processes
  packed = gathered[owner, np.arange(count)]
  # This process's pairs were read already; only the others' labels are
  # read again (names and tags only, no decoding).
  labels = {index: (row.name, row.ev_tag)
            for index, row in zip(own, local_rows)}
  rows = []
  for index in range(count):
    scores = {protocol.name: {} for protocol in protocols}
    for column, (protocol, metric) in enumerate(columns):
      scores[protocol][metric] = float(packed[index, column])
    name, tag = (labels[index] if index in labels else
                 input_pipeline.eval_pair_label(pairs_source, index))
    rows.append(PairScores(name, tag, scores))
  return summarise(rows, protocols, lpips=lpips), grid_rows, rows


def _lpips_variant() -> str:
  from expcorr_jax.metrics import lpips as lpips_lib  # pylint: disable=g-import-not-at-top
  return lpips_lib.VARIANT


def _tag_order(tag: str):
  from data_prep import ev_tags  # pylint: disable=g-import-not-at-top
  try:
    return (0, ev_tags.tag_to_ev(tag), tag)
  except ValueError:
    return (1, 0.0, tag)


