"""What a prepared dataset was built from, recorded beside it and checked.

TFDS names a prepared dataset by its name and version alone, so two
recipes building one name (say `multi_exposure/rendered` from MSEC's
renders and from the radiometry set) into one data_dir would share it: the
second would silently read the first's data. After each build,
`<version folder>/source.json` records the `manual_dir` given and a
fingerprint of its file list (relative paths and sizes, not contents, so
checking a large corpus costs one listing). Asking for the dataset again
with a manual_dir whose fingerprint differs fails at once, saying which
source is there and how to build the other beside it. A request without a
manual_dir (training reading what is there) is not checked.
"""

import dataclasses
import hashlib
import json
import os

from absl import logging

from data_prep import storage

SOURCE_FILE = 'source.json'


class SourceMismatchError(ValueError):
  """The prepared dataset was built from other source files."""


@dataclasses.dataclass(frozen=True)
class Source:
  """A dataset's source files.

  Attributes:
    manual_dir: the folder as given (absolute, or a URL); None: none (the
      embedded sample).
    files: how many files are under it.
    fingerprint: a hash of their relative paths and sizes; None: none.
  """
  manual_dir: str | None
  files: int = 0
  fingerprint: str | None = None


def describe(manual_dir: storage.PathLike | None) -> Source:
  """The `Source` of a manual_dir (one listing of its files).

  Raises:
    FileNotFoundError: `manual_dir` is given but is no folder.
  """
  if manual_dir is None:
    return Source(None)
  folder = storage.path(manual_dir)
  if not folder.is_dir():
    raise FileNotFoundError(
        f'manual_dir {folder} is not a folder: give the folder that holds the '
        'dataset\'s source files (--manual_dir / --config.data.manual_dir).')
  entries = sorted(storage.sizes_under(folder).items())
  digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]
  return Source(os.fspath(folder), len(entries), digest)


def record(version_dir: storage.PathLike, source: Source) -> None:
  """Writes `source` beside a freshly built dataset."""
  storage.write_text(storage.path(version_dir) / SOURCE_FILE,
                     json.dumps(dataclasses.asdict(source), indent=2))


def recorded(version_dir: storage.PathLike) -> Source | None:
  """The recorded source; None for a dataset built before records existed."""
  path = storage.path(version_dir) / SOURCE_FILE
  if not path.exists():
    return None
  return Source(**json.loads(path.read_text()))


def check(name: str, data_dir: str | None, version_dir: storage.PathLike,
          requested: Source, build_command: str) -> None:
  """Fails if the prepared dataset was built from another source.

  Args:
    name: the dataset, for the message.
    data_dir: where it is prepared, for the message.
    version_dir: its version folder.
    requested: the source asked for now (`describe(manual_dir)`).
    build_command: the command that builds the requested one, with a
      placeholder data_dir, for the message.

  Raises:
    SourceMismatchError: naming both sources and the fix.
  """
  if requested.manual_dir is None:
    return
  have = recorded(version_dir)
  if have is None:
    logging.warning('%s in %s records no source (built before sources were '
                    'recorded); it is used as it is, whatever --manual_dir '
                    'says.', name, data_dir)
    return
  if have.fingerprint is None or have.fingerprint == requested.fingerprint:
    return  # Built without a manual_dir (the sample, or TFDS's default).
  raise SourceMismatchError(
      f'Dataset {name!r} in data_dir {data_dir} was built from '
      f'{have.manual_dir} ({have.files} files, fingerprint '
      f'{have.fingerprint}), not from the manual_dir given now, '
      f'{requested.manual_dir} ({requested.files} files, fingerprint '
      f'{requested.fingerprint}). Build that one beside it in a data_dir of '
      f'its own (and pass the same --config.data.data_dir to training and '
      f'evaluation):\n  {build_command}')
