r"""Renders RAW photos into exposure sequences: a CLI and the API it wraps.

  python -m data_prep.render_raw --evs=-1.5,-1,0,1,1.5 --output_dir=OUT \
      RAW_FILES_OR_DIRS...

Each RAW is decoded once (`raw_render.decode_raw`) and every EV is rendered
from that decode, into `OUT/<stem>_<tag>.png` with MSEC tags (N1.5, N1, 0, P1,
P1.5). Directories are searched recursively for RAW extensions.

Why the output layout looks as it does:
  * Each PNG is written to `<name>.partial` and renamed when complete, so a
    crash never leaves a truncated PNG under a final name.
  * `OUT/<stem>.json` (the RAW's manifest entry) is written LAST: its existence
    marks the RAW complete. A rerun skips complete RAWs and re-renders the
    rest; each worker writes only its own files, so workers never race.
  * `OUT/manifest.json` gathers every per-RAW entry in OUT at the end of a run.
  * A rerun with other settings (EVs, bits, tone curve, half size) than those
    already in OUT stops with an error instead of mixing two kinds of renders.
A RAW that fails to decode is logged and skipped; the others still render.

With --mixed=K, each RAW also gets K mixed-exposure renders from the same
decode (`data_prep/mixed_exposure.py`: smooth EV maps seeded by the file's
content): `OUT/<stem>_mixed<k>.png`, its EV map grid beside it as
`OUT/<stem>_mixed<k>_ev.npy` (float32; `mixed_exposure.expand` gives the
full-resolution map), and the EV 0 render `<stem>_0.png` as the target.
"""

import concurrent.futures
import dataclasses
import glob
import io
import json
import multiprocessing
import os
import pathlib
import time
from typing import Any, NamedTuple, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tqdm

from data_prep import camera_tags
from data_prep import cli
from data_prep import ev_tags
from data_prep import image_codec
from data_prep import mixed_exposure
from data_prep import raw_render
from data_prep import storage

RAW_EXTENSIONS = frozenset((
    '.3fr', '.ari', '.arw', '.bay', '.cr2', '.cr3', '.crw', '.dcr', '.dng',
    '.erf', '.fff', '.iiq', '.k25', '.kdc', '.mef', '.mos', '.mrw', '.nef',
    '.nrw', '.orf', '.pef', '.raf', '.raw', '.rw2', '.rwl', '.sr2', '.srf',
    '.srw', '.x3f'))
MANIFEST_NAME = 'manifest.json'
FORMAT = 'expcorr_jax.render_raw/1'  # Per-RAW entries, `<stem>.json`.
MANIFEST_FORMAT = 'expcorr_jax.render_raw.manifest/1'
TONE_CURVE_DESCRIPTIONS = {
    'none': 'none: sRGB transfer only, radiometrically invertible',
    'camera': 'camera: raw_render.camera_tone_curve, a filmic S-curve applied '
              'to sRGB-encoded values',
}
_PARTIAL = storage.PARTIAL_SUFFIX


class RenderInputError(ValueError):
  """The inputs or settings of a render cannot work (no RAWs, clashes, ...)."""


class SettingsMismatchError(RenderInputError):
  """OUT already holds renders made with other settings or from other files."""


@dataclasses.dataclass(frozen=True)
class RenderSettings:
  """What a render produces; RAWs in one output directory must share it."""
  evs: tuple[float, ...] = ev_tags.MSEC_EVS
  bits: int = 8
  tone_curve: str = 'none'
  half_size: bool = False
  mixed: int = 0  # Mixed-exposure renders per RAW (needs EV 0 in evs).

  def __post_init__(self):
    evs = tuple(sorted(float(ev) for ev in self.evs))
    object.__setattr__(self, 'evs', evs)
    if not evs or len(set(evs)) != len(evs):
      raise RenderInputError(f'Give distinct EVs, got {self.evs!r}.')
    for ev in evs:
      tag = ev_tags.ev_to_tag(ev)
      if not ev_tags.is_tag(tag) or ev_tags.tag_to_ev(tag) != ev:
        raise RenderInputError(
            f'EV {ev!r} has no exact file-name tag ({tag!r}); give it with '
            'fewer decimals, e.g. 0.5 or 1.25.')
    if self.bits not in raw_render.BIT_DEPTHS:
      raise RenderInputError(f'bits must be 8 or 16, got {self.bits!r}.')
    if self.mixed < 0:
      raise RenderInputError(f'mixed must be >= 0, got {self.mixed!r}.')
    if self.mixed and 0.0 not in evs:
      raise RenderInputError(
          'Mixed-exposure renders take the EV 0 render as their target: '
          'include 0 in --evs.')
    if self.tone_curve not in raw_render.TONE_CURVES:
      raise RenderInputError(
          f'tone_curve must be one of {raw_render.TONE_CURVES}, got '
          f'{self.tone_curve!r}.')

  @property
  def tags(self) -> tuple[str, ...]:
    return tuple(ev_tags.ev_to_tag(ev) for ev in self.evs)

  def to_json(self) -> dict[str, Any]:
    return {'evs': list(self.evs), 'tags': list(self.tags), 'bits': self.bits,
            'tone_curve': self.tone_curve,
            'tone_curve_description': TONE_CURVE_DESCRIPTIONS[self.tone_curve],
            'transfer_function': 'sRGB (IEC 61966-2-1)',
            'half_size': self.half_size, 'mixed': self.mixed}


@dataclasses.dataclass
class RenderSummary:
  """What a `render_files` run did; paths are the RAW files' paths."""
  rendered: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  failed: dict[str, str] = dataclasses.field(default_factory=dict)
  manifest_path: str | None = None
  seconds: float = 0.0

  @property
  def succeeded(self) -> bool:
    """True when some RAW is rendered now or was already complete."""
    return bool(self.rendered or self.skipped)

  def summary_line(self) -> str:
    return (f'{len(self.rendered)} rendered, {len(self.skipped)} skipped '
            f'(already done), {len(self.failed)} failed in '
            f'{self.seconds:.1f} s.')


class _Outcome(NamedTuple):
  path: str
  error: str | None


def find_raw_files(
    inputs: Sequence[str | os.PathLike[str]]) -> list[pathlib.Path]:
  """Expands files and directories (searched recursively) into RAW files.

  An input may be in a bucket (gs://...), as for a Beam build's workers;
  its files are then `epath.Path`s.

  Files named explicitly are taken whatever their extension; in directories
  only RAW extensions count (case-insensitive). Outputs are named by stem, so
  two different RAWs with one stem (case-insensitively, for case-insensitive
  file systems) are an error, as is a stem that would overwrite the manifest.

  Raises:
    RenderInputError: an input is missing, nothing is found, or stems clash.
  """
  found: dict[Any, Any] = {}  # Resolved -> as given.
  for item in inputs:
    if storage.is_remote(item):  # A bucket: one listing, no symlinks.
      item = storage.path(item)
      for path in sorted(storage.files_under(item) if item.is_dir() else
                         [item], key=lambda p: p.relative_to(item).parts):
        if path.suffix.lower() in RAW_EXTENSIONS or path == item:
          found.setdefault(path, path)
      continue
    item = pathlib.Path(item)
    if item.is_dir():
      for path in sorted(item.rglob('*')):
        if path.suffix.lower() in RAW_EXTENSIONS and path.is_file():
          found.setdefault(path.resolve(), path)
    elif item.is_file():
      found.setdefault(item.resolve(), item)
    else:
      raise RenderInputError(f'Input {item} is neither a file nor a directory.')
  if not found:
    raise RenderInputError(
        f'No RAW files found in {[os.fspath(i) for i in inputs]}; directories '
        f'are searched for {", ".join(sorted(RAW_EXTENSIONS))}.')
  by_stem: dict[str, pathlib.Path] = {}
  for path in found.values():
    key = path.stem.casefold()
    if key == pathlib.Path(MANIFEST_NAME).stem:
      raise RenderInputError(f'{path}: a RAW named "manifest" would overwrite '
                             f'{MANIFEST_NAME}; rename it.')
    if key in by_stem:
      raise RenderInputError(
          f'{by_stem[key]} and {path} share the name "{path.stem}", so their '
          'renders would overwrite each other; rename one or render them into '
          'separate output directories.')
    by_stem[key] = path
  return list(found.values())


def _write_json(path: pathlib.Path, value: Any) -> None:
  storage.write_text(path, json.dumps(value, indent=2) + '\n')


def _read_entries(output_dir: pathlib.Path):
  """Yields (path, entry) for each complete per-RAW entry in `output_dir`."""
  for path in sorted(output_dir.glob('*.json')):
    try:
      entry = json.loads(path.read_text())
    except (OSError, ValueError):
      continue
    if isinstance(entry, dict) and entry.get('format') == FORMAT:
      yield path, entry


def _remove_orphans(output_dir: pathlib.Path, stem: str,
                    tags: Sequence[str]) -> None:
  """Deletes `<stem>_<tag>.png` of tags not rendered now (crashed old runs)."""
  for path in output_dir.glob(glob.escape(stem) + '_*.png'):
    scene, _, tag = path.stem.rpartition('_')
    if scene == stem and ev_tags.is_tag(tag) and tag not in tags:
      path.unlink()


def render_file(path: str | os.PathLike[str],
                output_dir: str | os.PathLike[str],
                settings: RenderSettings) -> dict[str, Any]:
  """Renders one RAW into `output_dir`; returns its manifest entry.

  The entry is written to `<stem>.json` after every PNG is in place; an old
  entry is removed first, so that the entry's existence means complete.

  Raises:
    raw_render.RawDecodeError: the RAW cannot be decoded.
  """
  path, output_dir = pathlib.Path(path), pathlib.Path(output_dir)
  stem = path.stem
  (output_dir / f'{stem}.json').unlink(missing_ok=True)
  image = raw_render.decode_raw(path, half_size=settings.half_size)
  _remove_orphans(output_dir, stem, settings.tags)
  outputs = {}
  for ev, tag in zip(settings.evs, settings.tags):
    name = f'{stem}_{tag}.png'
    image_codec.write_png(output_dir / name, raw_render.expose(
        image, ev, bits=settings.bits, tone_curve=settings.tone_curve))
    outputs[tag] = name
  if settings.mixed:
    grids = mixed_exposure.draw_maps(image.height, image.width, settings.mixed,
                                     mixed_exposure.content_seed(path))
    for index, grid in enumerate(grids):
      name = f'{stem}_mixed{index}'
      image_codec.write_png(output_dir / f'{name}.png', mixed_exposure.render(
          image, grid, bits=settings.bits, tone_curve=settings.tone_curve))
      encoded = io.BytesIO()
      np.save(encoded, grid)
      storage.write_bytes(output_dir / f'{name}_ev.npy', encoded.getvalue())
      outputs[f'mixed{index}'] = f'{name}.png'
      outputs[f'mixed{index}_ev'] = f'{name}_ev.npy'
  entry = {
      'format': FORMAT,
      'stem': stem,
      'source': os.fspath(path.resolve()),
      'source_bytes': path.stat().st_size,
      'camera': camera_tags.camera_make_model(path),
      'height': image.height,
      'width': image.width,
      'settings': settings.to_json(),
      'outputs': outputs,
      'raw': image.metadata,
  }
  _write_json(output_dir / f'{stem}.json', entry)
  return entry


def _render_task(path: pathlib.Path, output_dir: pathlib.Path,
                 settings: RenderSettings) -> _Outcome:
  """`render_file` for the pool: a bad RAW or a failed write is an outcome."""
  try:
    render_file(path, output_dir, settings)
  except (raw_render.RawDecodeError, OSError) as e:
    return _Outcome(os.fspath(path), f'{type(e).__name__}: {e}')
  return _Outcome(os.fspath(path), None)


def _plan(paths: Sequence[pathlib.Path], output_dir: pathlib.Path,
          settings: RenderSettings) -> tuple[list[pathlib.Path], list[str]]:
  """Splits inputs into (to render, already complete); checks for mixing.

  Raises:
    SettingsMismatchError: entries in `output_dir` have other settings, or
      an entry of an input's stem was rendered from another file.
  """
  wanted = settings.to_json()
  entries = {path.stem: entry for path, entry in _read_entries(output_dir)}
  conflicts = [f'{stem}.json has settings {entry.get("settings")}'
               for stem, entry in entries.items()
               if entry.get('settings') != wanted]
  todo, done = [], []
  for path in paths:
    entry = entries.get(path.stem)
    if entry is None:
      todo.append(path)
      continue
    source = pathlib.Path(entry.get('source', ''))
    if (source.name, entry.get('source_bytes')) != (path.name,
                                                    path.stat().st_size):
      conflicts.append(f'{path.stem}.json was rendered from {source} '
                       f'({entry.get("source_bytes")} bytes), not from {path}')
    elif all((output_dir / name).is_file()
             for name in entry.get('outputs', {}).values()):
      done.append(os.fspath(path))
    else:
      todo.append(path)
  if conflicts:
    raise SettingsMismatchError(
        f'{output_dir} already holds renders that differ from this run '
        f'(settings {wanted}): ' + '; '.join(conflicts[:5]) +
        (f'; and {len(conflicts) - 5} more' if len(conflicts) > 5 else '') +
        '. Use another --output_dir, or delete those renders to redo them.')
  return todo, done


def write_manifest(output_dir: str | os.PathLike[str]) -> str:
  """Writes `manifest.json` listing every complete RAW in `output_dir`."""
  output_dir = pathlib.Path(output_dir)
  entries = sorted((entry for _, entry in _read_entries(output_dir)),
                   key=lambda entry: entry['stem'])
  manifest = {'format': MANIFEST_FORMAT, 'count': len(entries),
              'settings': entries[0]['settings'] if entries else None,
              'files': entries}
  path = output_dir / MANIFEST_NAME
  _write_json(path, manifest)
  return os.fspath(path)


def render_files(paths: Sequence[str | os.PathLike[str]],
                 output_dir: str | os.PathLike[str],
                 evs: Sequence[float] = ev_tags.MSEC_EVS, *, bits: int = 8,
                 tone_curve: str = 'none', half_size: bool = False,
                 workers: int | None = None, progress: bool = True,
                 mixed: int = 0) -> RenderSummary:
  """Renders RAW files (or directories of them) into exposure sequences.

  Resumable: RAWs already complete in `output_dir` with these settings are
  skipped, others (re-)rendered. RAWs that fail to decode are logged and
  listed in the summary; they do not stop the others.

  Args:
    paths: RAW files and/or directories (searched recursively).
    output_dir: where PNGs and manifests go; created if missing.
    evs: exposures relative to as-shot, e.g. (-1.5, -1, 0, 1, 1.5).
    bits: 8 or 16 bits per channel.
    tone_curve: 'none' (invertible sRGB) or 'camera' (adds an S-curve).
    half_size: decode at half resolution.
    workers: processes rendering in parallel; None = os.cpu_count(); 1 renders
      in this process.
    progress: show a tqdm progress bar.
    mixed: mixed-exposure renders per RAW (see module docstring).

  Returns:
    What was rendered, skipped and failed (with reasons).

  Raises:
    RenderInputError: bad settings, no inputs, clashing stems.
    SettingsMismatchError: `output_dir` holds renders with other settings.
  """
  start = time.monotonic()
  settings = RenderSettings(tuple(evs), bits, tone_curve, half_size, mixed)
  if workers is not None and workers < 1:
    raise RenderInputError(f'workers must be at least 1, got {workers}.')
  raw_files = find_raw_files(paths)
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  todo, done = _plan(raw_files, output_dir, settings)
  for stale in output_dir.glob('*' + _PARTIAL):  # Left by a crashed run.
    stale.unlink()
  summary = RenderSummary(skipped=done)
  if done:
    logging.info('Skipping %d RAW files already rendered in %s.', len(done),
                 output_dir)
  workers = min(workers or os.cpu_count() or 1, max(len(todo), 1))
  with tqdm.tqdm(total=len(todo), unit='raw', desc='Rendering',
                 disable=not progress) as bar:
    for outcome in _run_tasks(todo, output_dir, settings, workers):
      if outcome.error is None:
        summary.rendered.append(outcome.path)
      else:
        summary.failed[outcome.path] = outcome.error
        logging.error('Skipped %s: %s', outcome.path, outcome.error)
      bar.update()
  summary.rendered.sort()
  summary.manifest_path = write_manifest(output_dir)
  summary.seconds = time.monotonic() - start
  return summary


def _run_tasks(todo, output_dir, settings, workers):
  """Yields an `_Outcome` per RAW, from this process or a process pool."""
  if workers == 1:
    for path in todo:
      yield _render_task(path, output_dir, settings)
    return
  # 'spawn': forking a process that may hold threads (JAX, tqdm) is unsafe.
  executor = concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context('spawn'))
  try:
    futures = [executor.submit(_render_task, path, output_dir, settings)
               for path in todo]
    for future in concurrent.futures.as_completed(futures):
      yield future.result()
  finally:
    executor.shutdown(cancel_futures=True)


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines the CLI's flags; not at import, so importing never clashes."""
  flags.DEFINE_string('evs', ','.join(f'{ev:g}' for ev in ev_tags.MSEC_EVS),
                      'Comma-separated EVs relative to as-shot.',
                      flag_values=flag_values)
  flags.DEFINE_string('output_dir', None, 'Directory for PNGs and manifests.',
                      flag_values=flag_values)
  flags.DEFINE_enum('bits', '8', ['8', '16'], 'Bits per PNG channel.',
                    flag_values=flag_values)
  flags.DEFINE_enum('tone_curve', 'none', list(raw_render.TONE_CURVES),
                    'none: invertible sRGB; camera: add an S-curve.',
                    flag_values=flag_values)
  flags.DEFINE_integer('workers', None, 'Parallel processes; default: CPUs.',
                       lower_bound=1, flag_values=flag_values)
  flags.DEFINE_integer('mixed', 0, 'Also render this many mixed-exposure '
                       'images per RAW, with their EV maps.',
                       flag_values=flag_values)
  flags.DEFINE_bool('half_size', False, 'Decode at half resolution.',
                    flag_values=flag_values)
  flags.DEFINE_bool('progress', True, 'Show a progress bar.',
                    flag_values=flag_values)


def main(argv: Sequence[str],
         flag_values: flags.FlagValues = flags.FLAGS) -> int:
  """Runs the CLI on parsed flags; returns 1 when nothing could be rendered."""
  fv = flag_values
  if not fv.output_dir:
    raise app.UsageError('--output_dir is required.')
  if len(argv) < 2:
    raise app.UsageError('Give RAW files or directories after the flags.')
  try:
    evs = ev_tags.parse_evs(fv.evs)
  except ValueError as e:
    raise app.UsageError(f'--evs: {e}') from e
  try:
    summary = render_files(argv[1:], fv.output_dir, evs, bits=int(fv.bits),
                           tone_curve=fv.tone_curve, half_size=fv.half_size,
                           workers=fv.workers, progress=fv.progress,
                           mixed=fv.mixed)
  except SettingsMismatchError as e:
    logging.error('%s', e)
    return 1
  except RenderInputError as e:
    raise app.UsageError(str(e)) from e
  print(summary.summary_line() + f' Manifest: {summary.manifest_path}',
        flush=True)
  return 0 if summary.succeeded else 1


def run(args: Sequence[str]) -> int:
  """Parses CLI `args` (no program name) into fresh flags and runs `main`."""
  return cli.run('render_raw', define_flags, main, args)


if __name__ == '__main__':
  define_flags(flags.FLAGS)
  app.run(main)
