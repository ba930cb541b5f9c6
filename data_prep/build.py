r"""Builds the TFDS datasets (array_record) and opens them for training.

  python -m data_prep.build --dataset=multi_exposure/sample --data_dir=DIR
  python -m data_prep.build --dataset=msec --data_dir=DIR --manual_dir=MSEC_DIR
  python -m data_prep.build --dataset=multi_exposure/raw --data_dir=DIR \
      --manual_dir=RAW_DIR \
      --beam_pipeline_options=direct_num_workers=2,direct_running_mode=multi_processing

Datasets: multi_exposure/{sample,raw,raw_radiometry,raw_16bit,rendered},
mixed_exposure/{sample,raw}, msec, sice, lcdp, lol/{v1,v2_real,v2_synthetic}
(see data_prep/datasets/).
Importing this module registers them all with TFDS.

The exposure-sequence builds (multi_exposure/*: RAW renders and rendered
folders; mixed_exposure/*) run on Apache Beam when given
`--beam_pipeline_options` (TFDS's flag and syntax: comma-separated Beam
options without the leading dashes; needs the `.[beam]` extra): on the
DirectRunner's processes, or Dataflow, Flink or Spark. They write the same
dataset as a local build (`data_prep/datasets/raw_beam.py`).

Why a build cannot leave a half dataset that looks complete: TFDS writes into
`<data_dir>/<name>/<config>/incomplete.<random>_<version>/` and renames it to
`<version>/` only after every split and `dataset_info.json` are written;
`is_prepared` looks for that final folder. A build that raises removes its
incomplete folder; one that is killed leaves it behind, and `ensure_prepared`
deletes such leftovers before it builds again. Builds of one dataset take a
file lock, so processes sharing a data_dir (one per host, say) build once.

A data_dir or manual_dir in a bucket (gs://...) is built through a local
staging folder ($EXPCORR_STAGING_DIR, else the system's temporary folder):
sources are copied down, the dataset is built there and uploaded, its
`dataset_info.json` last, so the bucket never holds a partial dataset that
looks complete; training then reads the shards from the bucket in place.
For a bucket there is no file lock: the trainer builds on process 0 while
the others wait (`train.prepare_dataset`); do not start two builds of one
dataset into one bucket by hand.
"""

import contextlib
import fcntl
import os
import pathlib
import re
import shlex
import shutil
import tempfile
import uuid
from typing import Any, Iterator, Sequence

from absl import app
from absl import flags
from absl import logging
import tensorflow_datasets as tfds

from data_prep import source_record
from data_prep import storage
from data_prep import tfds_spill
from data_prep import tiled_frames
# Imported for their side effect: defining a builder registers it with TFDS.
from data_prep.datasets import lcdp  # pylint: disable=unused-import
from data_prep.datasets import lol  # pylint: disable=unused-import
from data_prep.datasets import mixed_exposure  # pylint: disable=unused-import
from data_prep.datasets import msec  # pylint: disable=unused-import
from data_prep.datasets import multi_exposure  # pylint: disable=unused-import
from data_prep.datasets import raw_scenes
from data_prep.datasets import sice  # pylint: disable=unused-import

tfds_spill.install()  # Splits over 1 GB spill to disk without TensorFlow.

DATASETS = ('multi_exposure', 'mixed_exposure', 'msec', 'sice', 'lcdp', 'lol')
FILE_FORMAT = 'array_record'
STAGING_DIR_VARIABLE = 'EXPCORR_STAGING_DIR'
BEAM_STAGING_FOLDER = '.beam_staging'  # In a bucket data_dir; see below.
# TFDS writes it last and takes a version folder without it for unprepared.
_DATASET_INFO = 'dataset_info.json'


def beam_options(text: str | None):
  """Beam `PipelineOptions` from TFDS's `--beam_pipeline_options` syntax
  ('runner=DataflowRunner,project=P,...'), or None for no text.

  Raises:
    ValueError: Beam is not installed (the message gives the install), or
      an option is unknown to Beam (a typo would otherwise be dropped).
  """
  if not text:
    return None
  try:
    from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(
        '--beam_pipeline_options needs Apache Beam, an optional extra: '
        "pip install -e '.[beam]'") from e
  options = pipeline_options.PipelineOptions(
      flags=[f'--{option}' for option in text.split(',') if option])
  unknown = sorted(set(options.get_all_options(retain_unknown_options=True))
                   - set(options.get_all_options()))
  if unknown:
    raise ValueError(
        f'--beam_pipeline_options: Beam knows no option(s) {unknown}; check '
        'the spelling (e.g. direct_num_workers=2,direct_running_mode='
        'multi_processing) against the Beam pipeline options reference.')
  return options


def _download_config(manual_dir: str | os.PathLike[str] | None,
                     options: Any) -> tfds.download.DownloadConfig:
  """TFDS's build settings: the manual_dir, and Beam's options and runner
  when the build is on Beam (`raw_beam.direct_runner` for the DirectRunner).
  """
  runner = None
  if options is not None:
    from data_prep.datasets import raw_beam  # pylint: disable=g-import-not-at-top
    runner = raw_beam.direct_runner(options)
  return tfds.download.DownloadConfig(manual_dir=_expand(manual_dir),
                                      beam_options=options, beam_runner=runner)


def _check_beam_capable(builder: tfds.core.DatasetBuilder, name: str) -> None:
  """Fails for datasets that do not build on Beam: the copied benchmark
  sets (msec, sice, lcdp, lol), whose builds read a download."""
  if not isinstance(builder, raw_scenes.BeamBuildMixin):
    raise ValueError(
        f'{name} does not build on Beam; multi_exposure/* and '
        'mixed_exposure/* do. Build it without --beam_pipeline_options.')


class DatasetNotPreparedError(FileNotFoundError):
  """The dataset asked for has not been built in that data_dir."""


def build_command(name: str, data_dir: str | os.PathLike[str] | None,
                  manual_dir: str | os.PathLike[str] | None = None) -> str:
  """The shell command that builds `name` (shown in error messages).

  Without `manual_dir`, datasets that read source files get a placeholder
  `--manual_dir=FOLDER_WITH_THE_SOURCE_FILES` to fill in.
  """
  args = ['python', '-m', 'data_prep.build', f'--dataset={name}']
  if data_dir is not None:
    args.append(f'--data_dir={os.fspath(data_dir)}')
  if manual_dir is not None:
    args.append(f'--manual_dir={os.fspath(manual_dir)}')
  elif name not in ('multi_exposure', 'multi_exposure/sample',
                    'mixed_exposure', 'mixed_exposure/sample'):
    args.append('--manual_dir=FOLDER_WITH_THE_SOURCE_FILES')
  return shlex.join(args)


def _expand(path: str | os.PathLike[str] | None) -> str | None:
  """A path as a string with '~' expanded (flags like --x=~/d keep the ~);
  a URL (gs://...) as it is."""
  return storage.text(path)


def get_builder(name: str, data_dir: str | os.PathLike[str] | None,
                **builder_kwargs) -> tfds.core.DatasetBuilder:
  """The builder of `name` ('msec', 'multi_exposure/raw', ...) in data_dir.

  Raises:
    ValueError: `name` is not one of this project's datasets or configs.
  """
  base = name.split('/', 1)[0].split(':', 1)[0]
  if base not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; this project builds '
                     f'{", ".join(DATASETS)} (multi_exposure/<config>, '
                     'lol/<config>).')
  try:
    return tfds.builder(name, data_dir=_expand(data_dir),
                        file_format=FILE_FORMAT, **builder_kwargs)
  except ValueError as e:
    configs = [c.name for c in multi_exposure.MultiExposure.BUILDER_CONFIGS]
    raise ValueError(
        f'{name!r}: {e}. multi_exposure configs: {", ".join(configs)}; lol '
        f'configs: {", ".join(c.name for c in lol.Lol.BUILDER_CONFIGS)}.'
    ) from e


@contextlib.contextmanager
def _build_lock(builder: tfds.core.DatasetBuilder) -> Iterator[None]:
  """An exclusive lock per dataset variant, on a file beside its folder.

  Local by design: only local data_dirs get here (a bucket's build goes
  through a local staging folder, `_prepare_through_staging`).
  """
  config_dir = pathlib.Path(os.fspath(builder.data_dir)).parent
  config_dir.mkdir(parents=True, exist_ok=True)
  with open(config_dir / f'.build-{builder.version}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_incomplete(builder: tfds.core.DatasetBuilder) -> None:
  """Deletes `incomplete.*` folders a killed build left (lock held; a local
  data_dir, as for `_build_lock`)."""
  data_dir = pathlib.Path(os.fspath(builder.data_dir))
  pattern = re.compile(r'^incomplete\..*_' + re.escape(data_dir.name) + '$')
  for leftover in sorted(data_dir.parent.glob('incomplete.*')):
    if pattern.match(leftover.name) and leftover.is_dir():
      logging.warning('Removing %s, left by an interrupted build.', leftover)
      shutil.rmtree(leftover, ignore_errors=True)


def ensure_prepared(name: str, data_dir: str | os.PathLike[str] | None,
                    manual_dir: str | os.PathLike[str] | None = None, *,
                    allow_incomplete: bool = False,
                    beam_pipeline_options: str | None = None) -> None:
  """Builds dataset `name` in `data_dir` unless it is already prepared.

  Every source image is decoded once while building; unusable ones are left
  out of train / validation splits and fail a test split
  (`datasets/file_checks.py`).

  Args:
    name: 'multi_exposure/sample', 'msec', ... .
    data_dir: the TFDS data dir; None means TFDS's default.
    manual_dir: where the source files are (not needed for the sample);
      None means TFDS's default, `<data_dir>/downloads/manual`.
    allow_incomplete: build even if targets are missing or a test split has
      bad files, leaving those examples out and recording them (`omissions`).
    beam_pipeline_options: render on Apache Beam with these options (TFDS's
      `--beam_pipeline_options` syntax, see `beam_options`);
      multi_exposure/* and mixed_exposure/* only.

  Raises:
    FileNotFoundError: `manual_dir` is given but is no folder.
    source_record.SourceMismatchError: the dataset is prepared in `data_dir`
      from other source files than `manual_dir` holds.
  """
  source = source_record.describe(manual_dir)
  builder = get_builder(name, data_dir, allow_incomplete=allow_incomplete)
  options = beam_options(beam_pipeline_options)
  if options is not None:
    _check_beam_capable(builder, name)
  if builder.is_prepared():
    _check_source(builder, name, data_dir, manual_dir, source)
    return
  remote = storage.is_remote(data_dir) or storage.is_remote(manual_dir)
  if options is None and remote:
    _prepare_through_staging(builder, name, data_dir, manual_dir, source,
                             allow_incomplete)
  elif options is not None and storage.is_remote(data_dir):
    _build_on_beam_into_bucket(builder, name, data_dir, manual_dir, source,
                               allow_incomplete, options)
  else:  # Beam workers read a RAW folder in a bucket themselves.
    _build_locally(builder, name, data_dir, manual_dir, source, options)


def _check_source(builder: tfds.core.DatasetBuilder, name: str,
                  data_dir: str | os.PathLike[str] | None,
                  manual_dir: str | os.PathLike[str] | None,
                  source: source_record.Source) -> None:
  source_record.check(
      name, _expand(data_dir), builder.data_dir, source,
      build_command(name, 'ANOTHER_DATA_DIR', _expand(manual_dir)))


def _build_locally(builder: tfds.core.DatasetBuilder, name: str,
                   data_dir: str | os.PathLike[str] | None,
                   manual_dir: str | os.PathLike[str] | None,
                   source: source_record.Source,
                   options: Any = None) -> None:
  """Builds into a local data_dir under its lock; records `source`.
  `options`: Beam pipeline options, or None to build in this process."""
  with _build_lock(builder):
    if builder.is_prepared():  # Another process built it while we waited.
      _check_source(builder, name, data_dir, manual_dir, source)
      return
    _remove_incomplete(builder)
    logging.info('Building %s into %s.', name, builder.data_dir)
    builder.download_and_prepare(
        file_format=FILE_FORMAT,
        download_config=_download_config(manual_dir, options))
    source_record.record(builder.data_dir, source)


def _staging_parent() -> str:
  """Where builds for a bucket are staged: $EXPCORR_STAGING_DIR, else the
  system's temporary folder. It needs room for the sources and the built
  dataset."""
  return os.environ.get(STAGING_DIR_VARIABLE) or tempfile.gettempdir()


def _prepare_through_staging(builder: tfds.core.DatasetBuilder, name: str,
                             data_dir: str | os.PathLike[str] | None,
                             manual_dir: str | os.PathLike[str] | None,
                             source: source_record.Source,
                             allow_incomplete: bool) -> None:
  """Builds `name` for a bucket: sources in a bucket are copied down, the
  dataset is built locally and uploaded with `dataset_info.json` last.

  The array_record writer writes local files only (its reader opens gs://
  itself, so training reads the uploaded shards in place). TFDS takes a
  version folder without `dataset_info.json` for unprepared, so an upload
  cut short is never read as a dataset; the next build replaces it.
  """
  with tempfile.TemporaryDirectory(prefix='expcorr_build_',
                                   dir=_staging_parent()) as staging:
    local_manual = manual_dir
    if storage.is_remote(manual_dir):
      local_manual = os.path.join(staging, 'manual')
      count = storage.copy_tree(manual_dir, local_manual)
      logging.info('Copied %d source files of %s to %s for the build.', count,
                   manual_dir, local_manual)
    local_data = (os.path.join(staging, 'data') if storage.is_remote(data_dir)
                  else data_dir)
    local_builder = get_builder(name, local_data,
                                allow_incomplete=allow_incomplete)
    # The record names the source as given (the bucket), not the copy.
    _build_locally(local_builder, name, local_data, local_manual, source)
    if local_data is data_dir:
      return
    built = local_builder.data_dir
    target = storage.path(builder.data_dir)
    storage.remove_tree(target)  # An earlier, interrupted upload.
    count = storage.copy_tree(built, target, last=(_DATASET_INFO,))
    logging.info('Uploaded %s (%d files) to %s.', name, count, target)


def _build_on_beam_into_bucket(builder: tfds.core.DatasetBuilder, name: str,
                               data_dir: str | os.PathLike[str],
                               manual_dir: str | os.PathLike[str] | None,
                               source: source_record.Source,
                               allow_incomplete: bool, options: Any) -> None:
  """A Beam build whose data_dir is a bucket: its workers write the shards
  there (those of a distributed runner cannot reach this machine's disk).

  The dataset is built in a staging folder of the data_dir
  (`.beam_staging/<id>/`), then copied to its place inside the bucket with
  `dataset_info.json` last, and the staging folder removed: TFDS's own final
  rename is, in a bucket, a copy per object in name order, which would show
  `dataset_info.json` (what marks a dataset prepared) before the shards. A
  killed build leaves only its staging folder, which can be deleted.
  """
  staging = (f'{_expand(data_dir).rstrip("/")}/{BEAM_STAGING_FOLDER}/'
             f'{uuid.uuid4().hex}')
  try:
    staged = get_builder(name, staging, allow_incomplete=allow_incomplete)
    logging.info('Building %s on Beam into %s.', name, staged.data_dir)
    staged.download_and_prepare(
        file_format=FILE_FORMAT,
        download_config=_download_config(manual_dir, options))
    source_record.record(staged.data_dir, source)
    target = storage.path(builder.data_dir)
    storage.remove_tree(target)  # An earlier, interrupted copy.
    count = storage.copy_tree(staged.data_dir, target, last=(_DATASET_INFO,))
    logging.info('Moved %s (%d files) to %s.', name, count, target)
  finally:
    storage.remove_tree(staging)


def _other_versions(builder: tfds.core.DatasetBuilder) -> list[str]:
  """Versions other than the builder's that are prepared beside it."""
  config_dir = storage.path(os.fspath(builder.data_dir)).parent
  if not config_dir.exists():
    return []
  return sorted(child.name for child in config_dir.iterdir()
                if child.name != str(builder.version)
                and re.fullmatch(r'\d+\.\d+\.\d+', child.name)
                and (child / _DATASET_INFO).exists())


def data_source(name: str, split: str,
                data_dir: str | os.PathLike[str] | None):
  """`tfds.data_source` of a prepared dataset; never builds.

  Raises:
    DatasetNotPreparedError: not built in `data_dir`; the message gives the
      command that builds it.
    ValueError: the dataset has no split `split`.
  """
  builder = get_builder(name, data_dir)
  if not builder.is_prepared():
    where = (f'data_dir {_expand(data_dir)}' if data_dir is not None else
             "TFDS's default data_dir")
    older = _other_versions(builder)
    note = (f' It holds version(s) {", ".join(older)} of another storage '
            f'layout, which version {builder.version} does not read; '
            'rebuild (the old folder can then be deleted).' if older else '')
    raise DatasetNotPreparedError(
        f'Dataset {name!r} is not prepared in {where} (looked for '
        f'{builder.data_dir}).{note} Build it with:\n  '
        f'{build_command(name, _expand(data_dir))}')
  available = list(builder.info.splits)
  plain = re.fullmatch(r'[A-Za-z_]+', split)
  if plain and split not in available:
    raise ValueError(f'Dataset {name!r} in {builder.data_dir} has no split '
                     f'{split!r}; it has {available}.')
  records = tfds.data_source(name, split=split, data_dir=_expand(data_dir),
                             download=False)
  metadata = builder.info.metadata or {}
  if tiled_frames.is_tiled(metadata) and not plain:
    raise ValueError(f'Dataset {name!r} stores frames as tiles; give a whole '
                     f'split ({", ".join(available)}), not {split!r}.')
  return tiled_frames.scene_source(records, metadata, split,
                                   remote=storage.is_remote(builder.data_dir))


def omissions(name: str, split: str,
              data_dir: str | os.PathLike[str] | None) -> list[dict]:
  """The examples the build of a prepared dataset left out of `split`.

  Each is {'split', 'example', 'reason'} (from the dataset's metadata.json);
  evaluation reports repeat them, since figures on a smaller test set are
  not comparable with published ones.
  """
  metadata = get_builder(name, data_dir).info.metadata or {}
  return [dict(item) for item in metadata.get('left_out', ())
          if item.get('split') == split]


def split_source(name: str, data_dir: str | os.PathLike[str] | None
                 ) -> str | None:
  """How a prepared dataset's splits were decided, where its builder says
  (e.g. the radiometry release's own train list, or the name hash)."""
  return (get_builder(name, data_dir).info.metadata or {}).get('split_source')


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines the CLI's flags; not at import, so importing never clashes."""
  flags.DEFINE_string('dataset', None, 'e.g. multi_exposure/sample, msec.',
                      flag_values=flag_values)
  flags.DEFINE_string('data_dir', None, 'TFDS data dir (default: TFDS\'s).',
                      flag_values=flag_values)
  flags.DEFINE_string('manual_dir', None,
                      'Folder with the source files (RAWs, MSEC, ...).',
                      flag_values=flag_values)
  flags.DEFINE_bool('allow_incomplete', False, 'Build even if targets are '
                    'missing or the test split has unusable files: leave '
                    'them out and record them in the dataset\'s '
                    'metadata.json and in every evaluation report.',
                    flag_values=flag_values)
  flags.DEFINE_string(
      'beam_pipeline_options', None,
      'Build on Apache Beam (multi_exposure/*, mixed_exposure/*; needs the '
      '.[beam] extra): comma-separated Beam options without dashes, as TFDS\'s '
      'flag, e.g. direct_num_workers=2,direct_running_mode=multi_processing '
      'or runner=DataflowRunner,project=P,region=R,temp_location=gs://B/tmp,'
      'requirements_file=R.txt.', flag_values=flag_values)


def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS
         ) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flag_values.dataset:
    raise app.UsageError('--dataset is required, e.g. '
                         '--dataset=multi_exposure/sample.')
  try:
    ensure_prepared(flag_values.dataset, flag_values.data_dir,
                    flag_values.manual_dir,
                    allow_incomplete=flag_values.allow_incomplete,
                    beam_pipeline_options=flag_values.beam_pipeline_options)
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from e
  builder = get_builder(flag_values.dataset, flag_values.data_dir)
  splits = ', '.join(f'{split}: {info.num_examples}'
                     for split, info in builder.info.splits.items())
  print(f'{flag_values.dataset} is prepared in {builder.data_dir} '
        f'({splits}).', flush=True)


if __name__ == '__main__':
  define_flags(flags.FLAGS)
  app.run(main)
