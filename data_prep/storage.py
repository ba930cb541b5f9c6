"""Where files live: local paths and cloud URLs (gs://...) through one layer.

Every path a user gives (workdirs, data_dirs, manual_dirs, checkpoints,
images, output folders) goes through `path()`, an `etils.epath.Path`: the
layer TFDS and orbax build on, with `gcsfs` behind `gs://`. Local paths keep
their meaning ('~' expanded, made absolute); a URL is used as it is.

Credentials and endpoints are the clients' own: on a Cloud TPU VM or GCE
the application-default credentials; against an emulator the standard
variables, which the tests set for a fake-gcs-server on 127.0.0.1:
  STORAGE_EMULATOR_HOST            gcsfs (every file read and written here)
  CLOUD_STORAGE_EMULATOR_ENDPOINT  array_record (TFDS shards read in place)
  TENSORSTORE_GCS_HTTP_URL and GOOGLE_AUTH_TOKEN_FOR_TESTING
                                   tensorstore (orbax's array writes)

A write never leaves a half file under the final name: a local file is
written beside it and renamed; a cloud object becomes visible only once its
upload completes.
"""

import contextlib
import os
import shutil
import tempfile
from typing import Iterable, Iterator
import uuid

from etils import epath
import fsspec

# gcsfs caches folder listings per process; objects written by another
# process or client (tensorstore writes orbax's arrays) would be missed.
for _protocol in ('gs', 'gcs'):
  fsspec.config.conf.setdefault(_protocol, {}).setdefault(
      'use_listings_cache', False)

PathLike = str | os.PathLike[str]
_COPY_CHUNK = 16 << 20  # Bytes per read when copying to or from a bucket.
# A local file being written ends so; a crashed run leaves nothing else.
PARTIAL_SUFFIX = '.partial'


class StorageError(OSError):
  """A location cannot be used (missing bucket, no access, unreachable)."""


def is_remote(location: PathLike | None) -> bool:
  """Whether `location` is a URL (gs://...) rather than a local path."""
  return location is not None and '://' in os.fspath(location)


def path(location: PathLike) -> epath.Path:
  """`location` as an epath.Path: a URL as given, a local path absolute."""
  if isinstance(location, epath.Path) and is_remote(location):
    return location
  text = os.fspath(location)
  if is_remote(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def text(location: PathLike | None) -> str | None:
  """`path(location)` as a string (None stays None), for APIs and reports."""
  return None if location is None else os.fspath(path(location))


def write_bytes(location: PathLike, data: bytes) -> None:
  """Writes `data` to `location` atomically (see the module docstring)."""
  target = path(location)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(target):
    target.write_bytes(data)  # One upload: the object appears complete.
    return
  partial = target.with_name(
      f'.{target.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}')
  try:
    partial.write_bytes(data)
    os.replace(partial, target)
  finally:
    if partial.exists():
      partial.unlink()


def write_text(location: PathLike, content: str) -> None:
  write_bytes(location, content.encode())


def check_writable(location: PathLike, what: str, *,
                   create: bool = True) -> epath.Path:
  """Creates `location` (a folder) and proves a file can be written there.

  Run at start, before any data is built or anything compiles, so a
  missing bucket, missing write access or an unreachable endpoint fails at
  once.

  Args:
    location: the folder.
    what: the flag or setting it came from, for the message (e.g.
      '--workdir').
    create: False checks a local folder without creating it (its nearest
      existing parent must be a writable folder), for checks before a run
      that may still be refused; a bucket is always probed with an object.

  Returns:
    `path(location)`.

  Raises:
    StorageError: one line naming the location and the cause.
  """
  folder = path(location)
  probe = folder / f'.write-check-{uuid.uuid4().hex}'
  try:
    if not is_remote(folder) and not create:
      existing = next(p for p in (folder, *folder.parents) if p.exists())
      if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise PermissionError(f'{existing} is not a writable folder')
      return folder
    if not is_remote(folder):  # A bucket has no folders to make.
      folder.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b'')
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except
    raise StorageError(f'{what}={folder}: cannot write there '
                       f'({_cause(e, is_remote(folder))}).') from e
  return folder


def _cause(error: Exception, remote: bool) -> str:
  """A one-line reason for a storage failure, with the usual fix."""
  name = type(error).__name__
  if isinstance(error, FileNotFoundError) and remote:
    return (f'{name}: the bucket does not exist; create it (gcloud storage '
            'buckets create gs://BUCKET) or fix the name')
  if remote and (isinstance(error, PermissionError) or '403' in str(error)):
    return (f'{name}: no write access; grant the account '
            'roles/storage.objectAdmin on the bucket')
  if 'connect' in name.lower() or 'connect' in str(error).lower():
    return (f'{name}: the storage endpoint cannot be reached '
            f'({str(error).splitlines()[0][:200]})')
  return f'{name}: {str(error).splitlines()[0][:200] if str(error) else ""}'


def copy_tree(source: PathLike, destination: PathLike, *,
              last: Iterable[str] = ()) -> int:
  """Copies the files under `source` to `destination`; returns the count.

  Either side may be a URL (see `copy_file`). Files named in `last`
  (relative paths) are copied after all others, so a reader that waits for
  them (TFDS waits for `dataset_info.json`) never sees a partial copy as
  complete.
  """
  source, destination = path(source), path(destination)
  last = set(last)
  files = sorted(files_under(source))
  files.sort(key=lambda f: os.fspath(f.relative_to(source)) in last)
  for file in files:
    target = destination / os.fspath(file.relative_to(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    copy_file(file, target)
  return len(files)


def copy_file(source: PathLike, destination: PathLike) -> None:
  """Copies one file; either side may be a URL. Bucket to bucket is a copy
  inside the object store (no bytes through this machine); an upload is one
  object, visible only once complete."""
  source, destination = path(source), path(destination)
  if is_remote(source) and is_remote(destination):
    fsspec.filesystem('gcs').copy(os.fspath(source), os.fspath(destination))
  elif is_remote(source) or is_remote(destination):
    with source.open('rb') as reader, destination.open('wb') as writer:
      shutil.copyfileobj(reader, writer, _COPY_CHUNK)
  else:
    shutil.copyfile(source, destination)


@contextlib.contextmanager
def local_copy(location: PathLike) -> Iterator[PathLike]:
  """A local path holding the file at `location`: the path itself when it
  is local; for a URL, a temporary download (removed on exit), for readers
  of local files only (LibRaw)."""
  if not is_remote(location):
    yield location
    return
  handle, local = tempfile.mkstemp(prefix='expcorr_',
                                   suffix=path(location).suffix)
  os.close(handle)
  try:
    copy_file(location, local)
    yield local
  finally:
    os.unlink(local)


def files_under(folder: PathLike) -> list[epath.Path]:
  """Every file below `folder` (a listing per folder: no `**` glob, which
  epath refuses on buckets)."""
  files = []
  for child in path(folder).iterdir():
    if child.is_dir():
      files += files_under(child)
    else:
      files.append(child)
  return files


def sizes_under(folder: PathLike) -> dict[str, int]:
  """Relative path -> size of every file below `folder`.

  A bucket is listed in one paginated request (gcsfs's `find`), not one
  request per file.
  """
  folder = path(folder)
  if not is_remote(folder):
    return {os.fspath(file.relative_to(folder)): os.path.getsize(file)
            for file in files_under(folder)}
  filesystem = fsspec.filesystem('gcs')
  root = os.fspath(folder).split('://', 1)[1].rstrip('/')
  found = filesystem.find(root, detail=True)
  return {name[len(root) + 1:]: int(info['size'])
          for name, info in found.items() if info.get('type') == 'file'}


def remove_tree(location: PathLike) -> None:
  """Deletes a folder and everything under it, if it exists."""
  folder = path(location)
  if folder.exists():
    folder.rmtree()
