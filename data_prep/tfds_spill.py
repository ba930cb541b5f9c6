"""TFDS's writer without TensorFlow, for splits larger than 1 GB and for
shards written into a bucket.

TFDS's writer holds a split's serialised examples in memory up to
`shuffle.MAX_MEM_BUFFER_SIZE` (1 GB), then spills them into temporary
bucket files through `tf.io.gfile`, which needs TensorFlow, not a
dependency here: any split over 1 GB (a few dozen full-size scenes) failed
with "No module named 'tensorflow'". `install()` replaces the bucket class
with `SpillBucket`, the same file format written through `etils.epath`
(local folders and buckets alike). Call it before a build; `data_prep.build`
does on import.

`BucketExampleWriter`: the array_record writer writes local files only, so
a Beam build whose data_dir is a bucket (its workers write the shards,
`data_prep/datasets/raw_beam.py`) writes each shard to a local temporary
file and uploads it whole; a reader never sees a partial shard.
"""

import os
import struct
import tempfile
from typing import Iterable, Iterator

from etils import epath
from tensorflow_datasets.core import shuffle
from tensorflow_datasets.core import writer as writer_lib

from data_prep import storage

_KEY_BYTES = 16  # TFDS's 128-bit keys.


class SpillBucket:
  """A spill file of (key, size, data) entries, as TFDS's `_Bucket` writes
  it, without TensorFlow."""

  def __init__(self, path: epath.PathLike):
    self._path = epath.Path(path)
    self._file = None
    self._length = 0
    self._size = 0

  @property
  def size(self) -> int:
    return self._size

  def __len__(self) -> int:
    return self._length

  def add(self, key: int, data: bytes) -> None:
    if self._file is None:
      self._path.parent.mkdir(parents=True, exist_ok=True)
      self._file = self._path.open('wb')
    self._file.write(struct.pack('=QQ', (key >> 64) & (2**64 - 1),
                                 key & (2**64 - 1)))
    self._file.write(struct.pack('=Q', len(data)))
    self._file.write(data)
    self._length += 1
    self._size += len(data)

  def flush(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def read_values(self) -> Iterator[tuple[int, bytes]]:
    """Yields the (key, data) entries in the order they were added."""
    self.flush()
    if not self._path.exists():  # Nothing was ever added.
      return
    with self._path.open('rb') as reader:
      while header := reader.read(_KEY_BYTES + 8):
        high, low, size = struct.unpack('=QQQ', header)
        yield (high << 64) | low, reader.read(size)

  def del_file(self) -> None:
    if self._path.exists():
      self._path.unlink()


class BucketExampleWriter(writer_lib.ExampleWriter):
  """TFDS's example writer, also for shards in a bucket (see module)."""

  def write(self, path: epath.PathLike, examples: Iterable):
    if not storage.is_remote(path):
      return super().write(path, examples)
    with tempfile.TemporaryDirectory(prefix='expcorr_shard_') as folder:
      local = os.path.join(folder, epath.Path(path).name)
      positions = super().write(local, examples)
      storage.copy_file(local, path)
    return positions


def install() -> None:
  """Makes TFDS's writer spill through `SpillBucket` (idempotent)."""
  shuffle._Bucket = SpillBucket  # pylint: disable=protected-access
