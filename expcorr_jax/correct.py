r"""Corrects the exposure of photos with a trained or official model: a CLI.

  python -m expcorr_jax.correct --checkpoint=PATH --reference=IMG \
      --output_dir=DIR [--bits=auto|8|16] INPUTS...
  python -m expcorr_jax.correct --checkpoint=recnet.pth --model=recnet \
      --output_dir=DIR INPUTS...

A training checkpoint names its method; --model is needed only for an
official `.pth`, which records none (and is checked against a training
checkpoint's method where given).

UEC corrects towards the exposure of --reference; RECNet takes no reference.

INPUTS are image files or folders. Folders are searched NON-recursively for
JPEG, PNG and TIFF files (extensions in any case: .jpg, .JPEG, .Tif, ...), so
an output folder or other renders nested inside are never picked up; files
named explicitly are read whatever their extension. EXIF orientation is
applied on reading, so outputs are upright as viewers show the inputs.

Each input becomes `DIR/<stem>.png`, written atomically (`.partial`, then
renamed). --bits=auto (the default) writes 16-bit PNGs for 16-bit inputs and
8-bit PNGs otherwise; --bits=8 or 16 forces one depth. Two inputs with the
same stem (compared case-insensitively, for case-insensitive file systems), or
an output that would overwrite an input, stop the run before any work.
Existing outputs are overwritten unless --skip_existing.

A file that cannot be read (or is too narrow for the model) is logged with the
reason and skipped; the run ends with a summary line and exits non-zero only
when no image was corrected (outputs kept by --skip_existing count). Images of
any size are corrected at full resolution; each distinct size compiles once,
so a folder of photos from one camera compiles once (or twice, for portrait
and landscape).

Checkpoint: an official `.pth` (for RECNet, of any width and depth: they are
read off its weights), or a training workdir, its `checkpoints/` folder or
one step's folder (see `inference.Corrector.from_checkpoint`).
"""

import collections
import concurrent.futures
import dataclasses
import os
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import numpy as np
import tqdm

from data_prep import cli
from data_prep import image_codec
from data_prep import storage
from expcorr_jax import inference
from expcorr_jax import pixels

IMAGE_EXTENSIONS = frozenset(('.jpg', '.jpeg', '.png', '.tif', '.tiff'))
BITS_CHOICES = ('auto', '8', '16')
_PREFETCH = 2  # Images decoded ahead of the one being corrected.
_PENDING_WRITES = 2  # PNG encodes allowed to run behind the corrections.


class CorrectInputError(ValueError):
  """The inputs or settings cannot work (no images, name clashes, ...)."""


@dataclasses.dataclass
class Summary:
  """What a run did: paths of corrected, already-done and failed inputs."""
  output_dir: str
  corrected: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  failed: dict[str, str] = dataclasses.field(default_factory=dict)
  seconds: float = 0.0

  @property
  def succeeded(self) -> bool:
    """True when at least one image was corrected (now or by a past run)."""
    return bool(self.corrected or self.skipped)

  def summary_line(self) -> str:
    skipped = (f', {len(self.skipped)} skipped (already done)'
               if self.skipped else '')
    count = len(self.corrected)
    return (f'Corrected {count} image{"" if count == 1 else "s"} into '
            f'{self.output_dir}'
            f'{skipped}, {len(self.failed)} failed, in {self.seconds:.1f} s.')


def _identity(path: epath.Path) -> epath.Path:
  """What names one file: the resolved path locally (links followed)."""
  return path if storage.is_remote(path) else path.resolve()


def find_images(
    inputs: Sequence[str | os.PathLike[str]]) -> list[epath.Path]:
  """Files given, plus the JPEG/PNG/TIFF files directly inside folders given.

  Returns paths sorted within each folder, duplicates dropped.

  Raises:
    CorrectInputError: an input does not exist, or no image was found.
  """
  found: list[epath.Path] = []
  for item in inputs:
    path = storage.path(item)  # Local or in a bucket.
    if path.is_dir():
      found += sorted(p for p in path.iterdir() if p.is_file() and
                      p.suffix.lower() in IMAGE_EXTENSIONS)
    elif path.is_file():
      found.append(path)
    else:
      raise CorrectInputError(f'{path} is neither a file nor a directory.')
  by_file: dict[epath.Path, epath.Path] = {}
  for path in found:  # The first mention of a file wins.
    by_file.setdefault(_identity(path), path)
  unique = list(by_file.values())
  if not unique:
    raise CorrectInputError(
        f'No images ({", ".join(sorted(IMAGE_EXTENSIONS))}) found in '
        f'{[os.fspath(i) for i in inputs]}.')
  return unique


def output_paths(images: Sequence[epath.Path],
                 output_dir: str | os.PathLike[str]) -> list[epath.Path]:
  """`output_dir/<stem>.png` per input, refusing clashes and overwrites.

  Raises:
    CorrectInputError: two inputs share a stem, or an output would replace
      an input.
  """
  output_dir = storage.path(output_dir)
  by_stem: dict[str, list[epath.Path]] = collections.defaultdict(list)
  for path in images:
    by_stem[path.stem.casefold()].append(path)
  clashes = [paths for paths in by_stem.values() if len(paths) > 1]
  if clashes:
    listed = '; '.join(' and '.join(map(str, paths)) for paths in clashes)
    raise CorrectInputError(
        f'Inputs share the name of their output {output_dir}/<stem>.png: '
        f'{listed}. Rename them or correct them in separate runs.')
  outputs = [output_dir / f'{path.stem}.png' for path in images]
  resolved_inputs = {_identity(p) for p in images}
  for out in outputs:
    if _identity(out) in resolved_inputs:
      raise CorrectInputError(f'The output {out} would overwrite an input; '
                              'choose another --output_dir.')
  return outputs


def _output_bits(image: np.ndarray, bits: str) -> int:
  if bits == 'auto':
    return 16 if image.dtype == np.uint16 else 8
  return int(bits)


def correct_files(corrector: inference.Corrector,
                  inputs: Sequence[str | os.PathLike[str]],
                  output_dir: str | os.PathLike[str], *,
                  reference: np.ndarray | None = None, bits: str = 'auto',
                  skip_existing: bool = False,
                  progress: bool = True) -> Summary:
  """Corrects every image of `inputs` into `output_dir`; see module docstring.

  Decoding the next images and encoding finished PNGs run in threads beside
  the corrections, which keeps an accelerator busy.

  Args:
    corrector: the model to apply.
    inputs: image files and folders (searched non-recursively).
    output_dir: where `<stem>.png` go; created if missing.
    reference: the reference image, for models that need one.
    bits: 'auto' (16-bit PNGs for 16-bit inputs, else 8), '8' or '16'.
    skip_existing: leave inputs whose output exists alone.
    progress: show a tqdm progress bar.

  Returns:
    The summary; failures are in it and logged, not raised.

  Raises:
    CorrectInputError: see `find_images` and `output_paths`; also an unknown
      `bits`.
  """
  if bits not in BITS_CHOICES:
    raise CorrectInputError(f'bits must be one of {BITS_CHOICES}, got '
                            f'{bits!r}.')
  start = time.time()
  images = find_images(inputs)
  outputs = output_paths(images, output_dir)
  output_dir = storage.check_writable(output_dir, '--output_dir')
  summary = Summary(output_dir=os.fspath(output_dir))
  todo = []
  for path, out in zip(images, outputs):
    if skip_existing and out.exists():
      summary.skipped.append(str(path))
    else:
      todo.append((path, out))

  def fail(path: epath.Path, reason: str) -> None:
    logging.warning('Skipped %s: %s', path, reason)
    summary.failed[str(path)] = reason

  with concurrent.futures.ThreadPoolExecutor(
      max_workers=_PREFETCH + _PENDING_WRITES) as pool, tqdm.tqdm(
          total=len(todo), unit='image', disable=not progress) as bar:
    pending = iter(todo)
    reads = collections.deque()
    writes = collections.deque()

    def read_ahead():
      for path, out in pending:
        reads.append((path, out, pool.submit(image_codec.read_image, path)))
        if len(reads) >= _PREFETCH:
          return

    def finish_write():
      path, future = writes.popleft()
      try:
        future.result()
        summary.corrected.append(str(path))
      except (OSError, ValueError) as e:
        fail(path, f'cannot write its output: {e}')

    read_ahead()
    while reads:
      path, out, future = reads.popleft()
      read_ahead()
      try:
        image = future.result()
        corrected = corrector(image, reference)
      except (image_codec.ImageDecodeError, ValueError,
              jax.errors.JaxRuntimeError) as e:  # The last: e.g. out of memory.
        fail(path, str(e))
        bar.update()
        continue
      stored = pixels.to_integer(
          corrected, np.uint16 if _output_bits(image, bits) == 16 else np.uint8)
      writes.append((path, pool.submit(image_codec.write_png, out, stored)))
      while len(writes) > _PENDING_WRITES:
        finish_write()
      bar.update()
    while writes:
      finish_write()
  summary.seconds = time.time() - start
  return summary


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines the CLI's flags; not at import, so importing never clashes."""
  flags.DEFINE_string('checkpoint', None, 'Official .pth, training workdir, '
                      'its checkpoints/ folder or a step folder.',
                      flag_values=flag_values)
  flags.DEFINE_string('reference', None, 'Image whose exposure the outputs '
                      'should match (methods that take one).',
                      flag_values=flag_values)
  flags.DEFINE_string('output_dir', None, 'Directory for <stem>.png outputs.',
                      flag_values=flag_values)
  flags.DEFINE_string('model', None, 'The method of an official .pth: a '
                      'task name (expcorr_jax/tasks/<name>.py) or the module '
                      'path of a task of your own, as config.model. A '
                      'training checkpoint names its own.',
                      flag_values=flag_values)
  flags.DEFINE_enum('bits', 'auto', list(BITS_CHOICES), 'Bits per PNG '
                    'channel; auto: 16 for 16-bit inputs, else 8.',
                    flag_values=flag_values)
  flags.DEFINE_bool('skip_existing', False, 'Keep outputs that already exist '
                    'instead of correcting their inputs again.',
                    flag_values=flag_values)
  flags.DEFINE_bool('progress', True, 'Show a progress bar.',
                    flag_values=flag_values)


def _load(flag_values: flags.FlagValues
          ) -> tuple[inference.Corrector, np.ndarray | None]:
  """The corrector and reference the flags name; UsageError if they fail."""
  fv = flag_values
  try:
    corrector = inference.Corrector.from_checkpoint(fv.checkpoint, fv.model)
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(f'--checkpoint: {e}') from e
  if not corrector.needs_reference:
    if fv.reference:
      raise app.UsageError(f'--reference: {corrector.model_name} takes no '
                           'reference.')
    return corrector, None
  if not fv.reference:
    raise app.UsageError(
        f'--reference is required for {corrector.model_name}.')
  if not storage.path(fv.reference).is_file():
    raise app.UsageError(f'--reference: no file {fv.reference}.')
  try:
    return corrector, image_codec.read_image(fv.reference)
  except image_codec.ImageDecodeError as e:
    raise app.UsageError(f'--reference: {e}') from e


def main(argv: Sequence[str],
         flag_values: flags.FlagValues = flags.FLAGS) -> int:
  """Runs the CLI on parsed flags; returns 1 when nothing was corrected."""
  fv = flag_values
  for name in ('checkpoint', 'output_dir'):
    if not fv[name].value:
      raise app.UsageError(f'--{name} is required.')
  if len(argv) < 2:
    raise app.UsageError('Give image files or directories after the flags.')
  try:  # Cheap input checks first, before loading the model.
    output_paths(find_images(argv[1:]), fv.output_dir)
    storage.check_writable(fv.output_dir, '--output_dir', create=False)
  except (CorrectInputError, storage.StorageError) as e:
    raise app.UsageError(str(e)) from e
  corrector, reference = _load(fv)
  summary = correct_files(corrector, argv[1:], fv.output_dir,
                          reference=reference, bits=fv.bits,
                          skip_existing=fv.skip_existing,
                          progress=fv.progress)
  print(summary.summary_line(), flush=True)
  return 0 if summary.succeeded else 1


def run(args: Sequence[str]) -> int:
  """Parses CLI `args` (no program name) into fresh flags and runs `main`."""
  return cli.run('correct', define_flags, main, args)


if __name__ == '__main__':
  define_flags(flags.FLAGS)
  app.run(main)
