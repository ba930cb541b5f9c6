"""Apache Beam stages shared by the RAW-rendering builders.

A build given Beam options (`data_prep.build --beam_pipeline_options=...`,
TFDS's `DownloadConfig(beam_options=...)`) renders its RAWs in a Beam
pipeline instead of this process: on the DirectRunner's worker processes, or
on Dataflow, Flink or Spark workers. The stages here make such a build give
the dataset the local build gives, so they repeat its decisions in the
pipeline:
  1. every RAW is probed (`raw_scenes.probe_raw`, the local build's
     check) in parallel; the unreadable ones are left out with the same
     reason, in listing order;
  2. the scenes are split by the same rule over the same readable scenes
     (the rule needs them all, so it runs once on their collected names and
     reaches the renders as a side input);
  3. the builder renders each readable scene once, as the local build does,
     and each render goes to its split's output at once, with record keys
     that order the records as the local build's keys do (tiles:
     `tiled_frames.distributed_tile_key`; examples: their own keys, which
     TFDS hashes alike in both builds). Only the order of keys reaches the
     dataset, so the records and their order are the local build's.
The split names must be known when the pipeline is built: 'train' and
'validation' with two or more listed RAWs, else 'train'. A build where fewer
than two are readable fails with a message (the local build then writes
'train' alone); TFDS's Beam writer refuses an empty split.

Values the local build puts into the dataset's metadata while it generates
(kept counts, left-out files, scene tables) are computed in the pipeline,
written as JSON files into the dataset's build folder by the workers, and
read into the metadata once the pipeline has run (`read_values`), as TFDS's
own `BeamMetadataDict` does. Counters (`COUNTERS`, namespace
`NAMESPACE`) count readable and left-out RAWs and rendered scenes; the
builders log them.
"""

import collections
import json
from typing import Any, Callable, Sequence

from absl import logging
import apache_beam as beam
from apache_beam.metrics import metric
from etils import epath

from data_prep import tiled_frames
from data_prep.datasets import file_checks
from data_prep.datasets import raw_scenes
from data_prep.datasets import scene_split

NAMESPACE = 'expcorr_data_prep'
COUNTERS = ('raws_readable', 'raws_left_out', 'scenes_rendered',
            'scenes_failed_to_render')
METADATA_FOLDER = 'beam_metadata'  # In the build folder; removed after.


def count(name: str, value: int = 1) -> None:
  """Increments this project's Beam counter `name` (one of `COUNTERS`)."""
  metric.Metrics.counter(NAMESPACE, name).inc(value)


def direct_runner(options: Any) -> Any:
  """The runner for options that name none or Beam's DirectRunner: Beam's
  FnApiRunner, which honours `direct_num_workers` and `direct_running_mode`
  (worker processes or threads); None for any other runner.

  Beam's DirectRunner (2.78) first tries its Prism runner, a binary it
  downloads from GitHub at run time: offline that fails and it falls back to
  this FnApiRunner, online the build would run on another runner than the
  worker processes asked for, and reach the network. Choosing the
  FnApiRunner here, as the DirectRunner's fallback sets it up, makes a
  DirectRunner build the same everywhere.
  """
  # pylint: disable=g-import-not-at-top
  from apache_beam.options import pipeline_options
  from apache_beam.portability.api import beam_provision_api_pb2
  from apache_beam.runners.portability import portable_runner
  from apache_beam.runners.portability.fn_api_runner import fn_runner
  # pylint: enable=g-import-not-at-top
  name = options.view_as(pipeline_options.StandardOptions).runner
  if name not in (None, 'DirectRunner', 'SwitchingDirectRunner'):
    return None
  encoded = portable_runner.JobServiceHandle.encode_pipeline_options(
      options.get_all_options())
  return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
      beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def split_names(num_listed: int) -> list[str]:
  """The splits a Beam build writes for `num_listed` RAW files (see the
  module docstring)."""
  if num_listed >= 2:
    return [scene_split.TRAIN, scene_split.VALIDATION]
  return [scene_split.TRAIN]


class OncePerPipeline:
  """Builds a part of a pipeline that several splits share, once.

  TFDS expands each split's transform on the same pipeline; the first one
  to call this builds the shared part (probe, split, render) and the
  others get the same PCollections, so no RAW is rendered twice.
  """

  def __init__(self, build: Callable[[beam.pvalue.PBegin], Any]):
    self._build = build
    self._built: dict[int, Any] = {}

  def __call__(self, pbegin: beam.pvalue.PBegin) -> Any:
    key = id(pbegin.pipeline)
    if key not in self._built:
      self._built[key] = self._build(pbegin.pipeline)
    return self._built[key]


class _Probe(beam.DoFn):
  """(listing index, scene) -> the scene, or ('unreadable', index, scene,
  reason) on a tagged output."""

  def process(self, indexed):
    index, scene = indexed
    reason = raw_scenes.probe_raw(scene.path)
    if reason is None:
      count('raws_readable')
      yield scene
    else:
      count('raws_left_out')
      logging.warning('Skipping RAW %s: %s', scene.path, reason)
      yield beam.pvalue.TaggedOutput('unreadable', (index, scene, reason))


def _assign(names: list[str], unreadable: list, *, assign, dataset: str,
            splits: Sequence[str], total: int) -> dict[str, str]:
  """scene -> split over all readable scenes, or a clear failure."""
  if not names:
    raise ValueError(raw_scenes.no_usable_raw_message(
        total, [(scene, reason) for _, scene, reason in sorted(
            unreadable, key=lambda item: item[0])]))
  split_of = assign(sorted(names))
  missing = set(splits) - set(split_of.values())
  if missing:
    raise ValueError(
        f'{dataset}: only {len(names)} of the {total} RAW files are readable, '
        f'so split(s) {sorted(missing)} would be empty, which a Beam build '
        'cannot write. Add readable RAWs, or build without '
        '--beam_pipeline_options (a local build then writes the train split '
        'alone).')
  return split_of


def _left_out(unreadable: list) -> list[dict]:
  return [raw_scenes.omission_record(scene, reason)
          for _, scene, reason in sorted(unreadable, key=lambda item: item[0])]


def _kept(split_of: dict[str, str], examples_per_scene: int) -> dict:
  return {split: scenes * examples_per_scene
          for split, scenes in collections.Counter(split_of.values()).items()}


def readable_scenes_by_split(pipeline: beam.Pipeline,
                             scenes: Sequence[raw_scenes.RawScene], *,
                             assign: Callable[[list[str]], dict[str, str]],
                             dataset: str, metadata_dir: str,
                             examples_per_scene: int = 1):
  """Probes the scenes and splits the readable ones (steps 1-2 above).

  Writes the metadata values 'kept' (examples per split, counted as the
  local build counts them) and 'left_out' (unreadable RAWs).

  Returns:
    PCollection of (split, scene) for every readable scene.
  """
  splits = split_names(len(scenes))
  probed = (pipeline
            | 'ListRaws' >> beam.Create(list(enumerate(scenes)))
            | 'SpreadProbes' >> beam.Reshuffle()
            | 'Probe' >> beam.ParDo(_Probe()).with_outputs(
                'unreadable', main='readable'))
  unreadable = probed.unreadable | 'CollectUnreadable' >> (
      beam.combiners.ToList())
  split_of = (probed.readable
              | 'Names' >> beam.Map(lambda scene: scene.scene)
              | 'CollectNames' >> beam.combiners.ToList()
              | 'AssignSplits' >> beam.Map(
                  _assign, beam.pvalue.AsSingleton(unreadable),
                  assign=assign, dataset=dataset, splits=splits,
                  total=len(scenes)))
  write_value(unreadable | 'LeftOut' >> beam.Map(_left_out), metadata_dir,
              'left_out')
  write_value(split_of | 'Kept' >> beam.Map(
      _kept, examples_per_scene=examples_per_scene), metadata_dir, 'kept')
  return probed.readable | 'WithSplit' >> beam.Map(
      lambda scene, split_of: (split_of[scene.scene], scene),
      beam.pvalue.AsSingleton(split_of))


def _write_json(value: Any, path: str) -> None:
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(value))


def write_value(single: beam.PCollection, metadata_dir: str, key: str
                ) -> None:
  """Writes the one element of `single` as `<metadata_dir>/<key>.json`."""
  path = epath.Path(metadata_dir) / f'{key}.json'
  _ = single | f'Write_{key}' >> beam.Map(_write_json, path=str(path))


def read_values(metadata_dir: str) -> dict[str, Any]:
  """The values `write_value` wrote (key -> value); removes the folder."""
  folder = epath.Path(metadata_dir)
  values = {path.stem: json.loads(path.read_text())
            for path in sorted(folder.glob('*.json'))}
  folder.rmtree(missing_ok=True)
  return values


def log_counters(pipeline_result: Any, dataset: str) -> dict[str, int]:
  """Logs this project's counters of a finished pipeline; returns them."""
  found = pipeline_result.metrics().query(
      metric.MetricsFilter().with_namespace(NAMESPACE))['counters']
  totals = {name: 0 for name in COUNTERS}
  for result in found:
    totals[result.key.metric.name] = (
        totals.get(result.key.metric.name, 0) + result.committed)
  logging.info('%s Beam counters: %s', dataset,
               ', '.join(f'{name} {value}' for name, value in totals.items()))
  return totals


def apply_values(metadata: dict[str, Any], values: dict[str, Any]) -> None:
  """Puts `read_values`' values into a dataset's metadata; a key 'a.b'
  goes to metadata['a']['b']."""
  for key, value in values.items():
    outer, _, inner = key.partition('.')
    if inner:
      metadata.setdefault(outer, {})[inner] = value
    else:
      metadata[outer] = value


class _RenderTiles(beam.DoFn):
  """(split, scene) -> (key, tile example) on the output named by the
  split, for every tile of its frames, and (split, (scene entry, tile
  count)) on output 'scenes'. The keys (`tiled_frames.distributed_tile_key`)
  need nothing but the scene, so tiles go on to the writer at once.
  `render(scene)` gives (fields, frames); None when it cannot be rendered
  (logged there); or a reason, which goes to output 'problems' as (split,
  scene name, reason)."""

  def __init__(self, render: Callable[[Any], Any]):
    self._render = render

  def process(self, split_scene):
    split, scene = split_scene
    rendered = self._render(scene)
    if rendered is None or isinstance(rendered, str):
      count('scenes_failed_to_render')
      if rendered is not None:
        logging.warning('Leaving out scene %s: %s', scene.scene, rendered)
        yield beam.pvalue.TaggedOutput('problems',
                                       (split, scene.scene, rendered))
      return
    fields, frames = rendered
    entry = tiled_frames.scene_entry(fields, frames)
    tiles = 0
    for index, data in enumerate(tiled_frames.frame_tiles(frames)):
      yield beam.pvalue.TaggedOutput(split, (
          tiled_frames.distributed_tile_key(split, scene.scene, index),
          {tiled_frames.TILE_FEATURE: data}))
      tiles += 1
    count('scenes_rendered')
    yield beam.pvalue.TaggedOutput('scenes', (split, (entry, tiles)))


class _SharedSplits:
  """Splits whose records come from one shared part of the pipeline:
  `_build(pipeline)` builds it once (`OncePerPipeline`) and returns the
  render's outputs, one per split name."""

  def __init__(self, names: Sequence[str]):
    self.names = list(names)
    self._shared = OncePerPipeline(self._build)

  def _build(self, pipeline: beam.Pipeline) -> Any:
    raise NotImplementedError

  def transform(self, split: str) -> beam.PTransform:
    """The PTransform TFDS applies for `split`: -> (key, example)."""

    @beam.ptransform_fn
    def split_records(pbegin):
      return self._shared(pbegin)[split]

    return split_records()  # pylint: disable=no-value-for-parameter


class TiledSplits(_SharedSplits):
  """The splits of a tiled build (`multi_exposure`): each gets the records
  the local build writes, in its order, and its scene table
  (`tiled_frames`) as the metadata value '<SCENE_TABLE>.<split>'.

  Args:
    names: the splits.
    scenes_by_split: pipeline -> PCollection of (split, scene).
    render: see `_RenderTiles`.
    metadata_dir: where the workers write metadata values.
    finish: optional; called with the render's outputs ('scenes',
      'problems') to add stages (e.g. the omission records).
  """

  def __init__(self, names: Sequence[str], *, scenes_by_split, render,
               metadata_dir: str, finish=None):
    super().__init__(names)
    self._scenes_by_split = scenes_by_split
    self._render = render
    self._metadata_dir = metadata_dir
    self._finish = finish

  def _build(self, pipeline):
    metadata_dir = self._metadata_dir
    rendered = (self._scenes_by_split(pipeline)
                | 'SpreadRenders' >> beam.Reshuffle()
                | 'Render' >> beam.ParDo(_RenderTiles(self._render))
                .with_outputs('scenes', 'problems', *self.names))
    for split in self.names:
      table = (rendered.scenes
               | f'ScenesOf_{split}' >> beam.Filter(
                   lambda item, split=split: item[0] == split)
               | f'Entries_{split}' >> beam.Map(lambda item: item[1])
               | f'CollectScenes_{split}' >> beam.combiners.ToList()
               | f'Table_{split}' >> beam.Map(
                   lambda entries, split=split: tiled_frames.table_from_entries(
                       split, entries)))
      write_value(table, metadata_dir, f'{tiled_frames.SCENE_TABLE}.{split}')
    if self._finish is not None:
      self._finish(rendered)
    return rendered


def raw_tiled_splits(scenes: Sequence[raw_scenes.RawScene], *, render, assign,
                     dataset: str, metadata_dir: str) -> TiledSplits:
  """`TiledSplits` of RAW scenes: probed and split in the pipeline
  (`readable_scenes_by_split`), rendered by `render(scene)`."""
  return TiledSplits(
      split_names(len(scenes)), render=render, metadata_dir=metadata_dir,
      scenes_by_split=lambda pipeline: readable_scenes_by_split(
          pipeline, scenes, assign=assign, dataset=dataset,
          metadata_dir=metadata_dir))


def _omission_metadata(problems: list, entries: list, *, dataset: str,
                       splits: Sequence[str]) -> dict[str, Any]:
  """'kept' and 'left_out' as the local build records them
  (`file_checks.Omissions`, problems in scene order), or its failure."""
  omissions = file_checks.Omissions(dataset, allow_incomplete=False)
  for split, scene, reason in sorted(problems, key=lambda item: item[1]):
    omissions.add(split, scene, reason)
  kept = dict(collections.Counter(split for split, _ in entries))
  omissions.finish(kept)
  empty = [split for split in splits if not kept.get(split)]
  if empty:
    raise ValueError(
        f'{dataset}: no usable scene is left in split(s) {empty}, which a '
        'Beam build cannot write. Fix the files named above, or build '
        'without --beam_pipeline_options.')
  return omissions.metadata()


def listed_tiled_splits(scenes_and_splits: Sequence[tuple[str, Any]], *,
                        render, dataset: str,
                        metadata_dir: str) -> TiledSplits:
  """`TiledSplits` of scenes split before the build (`multi_exposure/
  rendered`), whose `render(scene)` checks them: unusable scenes are left
  out and recorded as the local build records them."""
  names = sorted({split for split, _ in scenes_and_splits})

  def finish(rendered):
    entries = rendered.scenes | 'CollectEntries' >> beam.combiners.ToList()
    metadata = (rendered.problems
                | 'CollectProblems' >> beam.combiners.ToList()
                | 'Omissions' >> beam.Map(
                    _omission_metadata, beam.pvalue.AsSingleton(entries),
                    dataset=dataset, splits=names))
    for key in ('kept', 'left_out'):
      write_value(metadata | f'Only_{key}' >> beam.Map(
          lambda value, key=key: value[key]), metadata_dir, key)

  return TiledSplits(
      names, render=render, metadata_dir=metadata_dir, finish=finish,
      scenes_by_split=lambda pipeline: pipeline | 'ListScenes' >> beam.Create(
          list(scenes_and_splits)))


class _RenderExamples(beam.DoFn):
  """(split, scene) -> (key, example) on the output named by the split,
  for each of the scene's examples."""

  def __init__(self, render: Callable[[Any], Any]):
    self._render = render

  def process(self, split_scene):
    split, scene = split_scene
    examples = self._render(scene)
    if examples is None:
      count('scenes_failed_to_render')
      return
    count('scenes_rendered')
    for key_example in examples:
      yield beam.pvalue.TaggedOutput(split, key_example)


class ExampleSplits(_SharedSplits):
  """The splits of a build whose `render(scene)` gives a list of (key,
  example) or None (`mixed_exposure`)."""

  def __init__(self, scenes, *, render, assign, dataset: str,
               metadata_dir: str, examples_per_scene: int):
    super().__init__(split_names(len(scenes)))
    self._scenes_by_split = lambda pipeline: readable_scenes_by_split(
        pipeline, scenes, assign=assign, dataset=dataset,
        metadata_dir=metadata_dir, examples_per_scene=examples_per_scene)
    self._render = render

  def _build(self, pipeline):
    return (self._scenes_by_split(pipeline)
            | 'SpreadRenders' >> beam.Reshuffle()
            | 'Render' >> beam.ParDo(_RenderExamples(self._render))
            .with_outputs(*self.names))
