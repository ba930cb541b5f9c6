"""Frames stored as tiles, so that a training crop reads only what it keeps.

A multi-exposure dataset (`multi_exposure` 2.0.0 and later) stores every
frame as TILE x TILE tiles of raw pixels (uint8, or little-endian uint16),
one record per tile, row-major within a frame, frames of a scene in EV
order, scenes in the order of the earlier layout (`scene_order`). Records
are compressed by array_record (zstd, TFDS's default), so a tile costs one
small read and no image decode: a 448x448 crop touches at most 5x5 tiles of
128, where the earlier layout (1.x) read a whole scene record and decoded
whole frames.

The stored pixels are exactly those `image_codec.decode_image` gives for the
source file or render, so a crop equals the same box of a full decode, bit
for bit, and the UEC sampler gives the same samples for a seed as the
scene-record layout did.

Which record holds which tile is kept in the dataset's metadata (the scene
table, `SCENE_TABLE`), written by the builder; `TiledSceneSource` reads a
split as the scene records of the earlier layout, with each frame a
`TiledFrame` that decodes a box (`crop`) or the whole frame (`decode`).
"""

import dataclasses
import hashlib
from typing import Any, Iterator, NamedTuple, Sequence

import grain
import numpy as np
from tensorflow_datasets.proto import tf_example_pb2

TILE_SIZE = 128
LAYOUT_KEY = 'frame_layout'  # Metadata: {'kind': 'tiles', 'tile_size': ..}.
SCENE_TABLE = 'scenes'  # Metadata: split -> list of scene entries.
TILE_FEATURE = 'tile'
# Record keys of one split: scene i's tiles take keys from i * span up, so
# the keys sort in write order and spread over the writer's spill buckets.
_KEY_RANGE = 2**127
_TILE_INDEX_BITS = 40  # Tiles per scene in `distributed_tile_key`.
_DTYPES = {'uint8': np.dtype(np.uint8), 'uint16': np.dtype('<u2')}


def scene_order(split: str, scenes: Sequence[Any],
                name: Any = lambda scene: scene.scene) -> list[Any]:
  """`scenes` in the order the scene-record layout (1.x) stored them.

  TFDS's writer ordered records by the MD5 of split name + record key (the
  scene name); the tiled layout keeps that order so that scene indices,
  and with them the samples a seed draws, are as they were.
  """
  return sorted(scenes, key=lambda scene: scene_order_key(split,
                                                         name(scene)))


def scene_order_key(split: str, scene: str) -> int:
  """The 128-bit value `scene_order` sorts a split's scenes by."""
  key = scene.replace('\\', '/').encode()
  return int(hashlib.md5(split.encode() + key).hexdigest(), 16)


def distributed_tile_key(split: str, scene: str, index: int) -> int:
  """A record key for tile `index` of a scene that orders a split's tiles
  as `SceneTableWriter`'s keys do (scenes in `scene_order`, then tiles),
  computable from the scene alone, as a distributed build's workers need.
  Only the order of keys reaches the dataset."""
  if not 0 <= index < 2**_TILE_INDEX_BITS:
    raise ValueError(f'Tile index {index} is out of range.')
  return (scene_order_key(split, scene) << _TILE_INDEX_BITS) | index


def grid(height: int, width: int, tile: int = TILE_SIZE) -> tuple[int, int]:
  """(rows, columns) of tiles covering a height x width frame."""
  return -(-height // tile), -(-width // tile)


def split_into_tiles(image: np.ndarray, tile: int = TILE_SIZE
                     ) -> Iterator[bytes]:
  """The raw bytes of each tile of an HxWx3 uint8/uint16 image, row-major;
  edge tiles are smaller (never padded)."""
  if image.dtype.name not in _DTYPES or image.ndim != 3:
    raise ValueError(f'Tiles hold HxWxC uint8 or uint16 images, got '
                     f'{image.dtype} {image.shape}.')
  stored = image.astype(_DTYPES[image.dtype.name], copy=False)
  for top in range(0, image.shape[0], tile):
    for left in range(0, image.shape[1], tile):
      yield np.ascontiguousarray(stored[top:top + tile, left:left + tile]
                                 ).tobytes()


def scene_entry(fields: dict[str, Any], frames: Sequence[np.ndarray]
                ) -> dict[str, Any]:
  """A scene's entry in the scene table, less `first_record`: `fields` plus
  the frames' height, width, channels and dtypes.

  Raises:
    ValueError: the frames differ in size.
  """
  shapes = {frame.shape for frame in frames}
  if len(shapes) != 1:
    raise ValueError(f'Scene {fields.get("scene")!r}: its frames differ in '
                     f'size: {sorted(shapes)}.')
  height, width, channels = frames[0].shape
  return {**fields, 'height': int(height), 'width': int(width),
          'channels': int(channels),
          'dtypes': [frame.dtype.name for frame in frames]}


def frame_tiles(frames: Sequence[np.ndarray], tile: int = TILE_SIZE
                ) -> Iterator[bytes]:
  """Every tile of the frames, in record order (frame by frame, row-major)."""
  for frame in frames:
    yield from split_into_tiles(frame, tile)


def table_from_entries(split: str,
                       entries: Sequence[tuple[dict[str, Any], int]]
                       ) -> list[dict[str, Any]]:
  """A split's scene table from (`scene_entry`, tile count) pairs given in
  any order (as a distributed build collects them): in `scene_order`, each
  entry with its `first_record`, as `SceneTableWriter` makes it."""
  table, first = [], 0
  for entry, count in scene_order(split, entries,
                                  name=lambda pair: pair[0]['scene']):
    table.append({**entry, 'first_record': first})
    first += count
  return table


class SceneTableWriter:
  """Builds one split's scene table and record keys while its tiles are
  yielded (scenes that fail to render are simply never added)."""

  def __init__(self, num_scenes: int, tile: int = TILE_SIZE):
    self.tile = tile
    self.scenes: list[dict[str, Any]] = []
    self._span = _KEY_RANGE // max(1, num_scenes)
    self._next_record = 0

  def add_scene(self, fields: dict[str, Any], frames: Sequence[np.ndarray]
                ) -> Iterator[tuple[int, dict[str, bytes]]]:
    """Yields (key, example) of every tile of the scene's frames and adds
    the scene (`fields` plus height, width, dtypes, first record) to the
    table once all are yielded."""
    entry = scene_entry(fields, frames)
    key = len(self.scenes) * self._span
    count = 0
    for data in frame_tiles(frames, self.tile):
      yield key + count, {TILE_FEATURE: data}
      count += 1
    if count >= self._span:
      raise ValueError('Too many tiles for the key range of one scene.')
    self.scenes.append({**entry, 'first_record': self._next_record})
    self._next_record += count


class TileRecords:
  """A split's tile records: `read(indices)` -> each tile's bytes.

  Reads the array_record records under a TFDS data source and takes each
  tile out of its `tf.train.Example` without TFDS's per-example decoding
  (see `tile_payload`). A crop's tiles on a local disk are read one record
  after another: in a grain worker that costs the least CPU (the 80 tiles
  of a UEC sample: 6.1-7.4 ms of CPU time against 10.4 ms with
  array_record's parallel reads, whose threads and their start-up the
  worker pays for; measured on 2000x3000 frames). A whole frame
  (`parallel=True`, what evaluation reads), and any read from a bucket, use
  the parallel reads, which decompress on several threads and cost a bucket
  about one round trip, not one per tile.
  """

  def __init__(self, tfds_source: Any, remote: bool = False):
    self._tfds_source = tfds_source
    self._records = tfds_source.data_source
    self._remote = remote

  def read(self, indices: Sequence[int], *, parallel: bool = False
           ) -> Iterator[memoryview | bytes]:
    """The tiles' bytes, in the order of `indices`. Read one by one, each
    is read as the iterator reaches it, so that a tile is copied into its
    crop while it is still in the CPU's cache."""
    if self._remote or parallel:
      records = iter(self._records.__getitems__(list(indices)))
    else:
      records = (self._records[index] for index in indices)
    return (tile_payload(record) for record in records)

  def __len__(self) -> int:
    return len(self._records)

  def __repr__(self) -> str:
    return repr(self._tfds_source)


def tile_payload(record: bytes) -> memoryview | bytes:
  """The tile bytes of one record, a serialized `tf.train.Example`.

  TFDS serializes a tile record, an Example of the one bytes feature
  `TILE_FEATURE`, as a prefix that depends only on the record's length
  (tags and lengths), then the tile's bytes. A record with that prefix gives
  its tail as a view, with no parse and no copy (80 tiles of a sample: ~1 ms
  less); any other (another writer's serialization) is parsed with
  protobuf.
  """
  prefix = _PREFIXES.get(len(record))
  if prefix is None or not record.startswith(prefix):
    size = _canonical_prefix_size(record)
    if size is None:
      return _parsed_tile(record)
    if len(_PREFIXES) >= _MAX_PREFIXES:
      _PREFIXES.clear()
    prefix = _PREFIXES[len(record)] = bytes(record[:size])
  return memoryview(record)[len(prefix):]


def _parsed_tile(record: bytes) -> bytes:
  """The tile of a record in any valid serialization."""
  feature = tf_example_pb2.Example.FromString(record).features.feature
  if (TILE_FEATURE not in feature or
      len(feature[TILE_FEATURE].bytes_list.value) != 1):
    raise ValueError(f'A record holds no {TILE_FEATURE!r} bytes: the dataset '
                     'is damaged (rebuild it with python -m data_prep.build).')
  return feature[TILE_FEATURE].bytes_list.value[0]


# Record length -> the prefix before the tile in TFDS's serialization (one
# length has one: a longer tile never has a shorter prefix).
_PREFIXES: dict[int, bytes] = {}
_MAX_PREFIXES = 4096
_TILE_KEY_FIELD = b'\x0a\x04' + TILE_FEATURE.encode()  # Map entry key.


def _canonical_prefix_size(record: bytes) -> int | None:
  """The length of what precedes the tile when `record` is
  Example{features{feature{key: 'tile', value{bytes_list{value: tile}}}}}
  with every message holding its one field and nothing else, or None."""
  end = len(record)

  def spans_to_end(position, tag):
    """Position after `tag` and its length when that field's bytes run to
    the record's end, else None."""
    if position >= end or record[position] != tag:
      return None
    length, shift, position = 0, 0, position + 1
    while position < end and shift < 64:
      byte = record[position]
      position += 1
      length |= (byte & 0x7F) << shift
      shift += 7
      if byte < 0x80:
        return position if position + length == end else None
    return None

  position = 0
  for tag in (0x0A, 0x0A):  # Example.features, Features.feature (entry).
    position = spans_to_end(position, tag)
    if position is None:
      return None
  if record[position:position + len(_TILE_KEY_FIELD)] != _TILE_KEY_FIELD:
    return None
  position += len(_TILE_KEY_FIELD)
  # The entry's value, Feature.bytes_list, BytesList.value.
  for tag in (0x12, 0x0A, 0x0A):
    position = spans_to_end(position, tag)
    if position is None:
      return None
  return position


@dataclasses.dataclass(frozen=True, eq=False)
class TiledFrame:
  """One stored frame: decodes a box of it, or all of it, from its tiles.

  Attributes:
    tiles: the split's tile records (`TileRecords`).
    first_record: index of the frame's top-left tile in `tiles`.
    shape: (height, width, channels) of the frame.
    dtype: 'uint8' or 'uint16'.
    tile: the tile size.
  """
  tiles: Any
  first_record: int
  shape: tuple[int, int, int]
  dtype: str
  tile: int = TILE_SIZE

  def crop(self, top: int, left: int, height: int, width: int, *,
           flip_lr: bool = False, flip_ud: bool = False) -> np.ndarray:
    """Pixels [top:top+height, left:left+width], reading only the tiles the
    box touches; mirrored left-right and/or up-down when asked (as
    `image[:, ::-1]`, `image[::-1]`), in the same copy."""
    return crop_frames([self], top, left, height, width, flip_lr=flip_lr,
                       flip_ud=flip_ud)[0]

  def decode(self) -> np.ndarray:
    """The whole frame (its tiles read in parallel)."""
    box = CropBox(0, 0, self.shape[0], self.shape[1])
    return crop_frames_in_boxes([self], [box], parallel_read=True)[0]

  def tiles_of_box(self, top: int, left: int, height: int, width: int
                   ) -> list[tuple[int, int]]:
    """(row, column) of every tile the box touches, row-major."""
    frame_height, frame_width, _ = self.shape
    if (top < 0 or left < 0 or height < 1 or width < 1 or
        top + height > frame_height or left + width > frame_width):
      raise ValueError(f'Box {height}x{width} at ({top}, {left}) is outside '
                       f'the {frame_height}x{frame_width} frame.')
    rows = range(top // self.tile, (top + height - 1) // self.tile + 1)
    cols = range(left // self.tile, (left + width - 1) // self.tile + 1)
    return [(row, col) for row in rows for col in cols]

  def record_of(self, row: int, col: int) -> int:
    return (self.first_record +
            row * grid(self.shape[0], self.shape[1], self.tile)[1] + col)


class CropBox(NamedTuple):
  """A crop box of a frame, and whether the crop is flipped."""
  top: int
  left: int
  height: int
  width: int
  flip_lr: bool = False
  flip_ud: bool = False


def crop_frames(frames: Sequence[TiledFrame], top: int, left: int,
                height: int, width: int, *, flip_lr: bool = False,
                flip_ud: bool = False) -> list[np.ndarray]:
  """The same box of several frames of one split (see `TiledFrame.crop`),
  their tiles fetched in one read: from a bucket, one round trip for all."""
  box = CropBox(top, left, height, width, flip_lr, flip_ud)
  return crop_frames_in_boxes(frames, [box] * len(frames))


def crop_frames_in_boxes(frames: Sequence[TiledFrame],
                         boxes: Sequence[CropBox], *,
                         parallel_read: bool = False) -> list[np.ndarray]:
  """Each frame's own box (frames of one split, e.g. of two scenes), all
  their tiles fetched in one read: from a bucket, one round trip (see
  `TileRecords.read` for `parallel_read`)."""
  if len(frames) != len(boxes):
    raise ValueError(f'{len(frames)} frames but {len(boxes)} boxes.')
  if any(frame.tiles is not frames[0].tiles for frame in frames):
    raise ValueError('crop_frames reads frames of one split only.')
  wanted = [frame.tiles_of_box(box.top, box.left, box.height, box.width)
            for frame, box in zip(frames, boxes)]
  tiles = iter(frames[0].tiles.read(
      [frame.record_of(row, col)
       for frame, cells in zip(frames, wanted) for row, col in cells],
      parallel=parallel_read))
  crops = []
  for frame, box, cells in zip(frames, boxes, wanted):
    top, left, height, width = box.top, box.left, box.height, box.width
    frame_height, frame_width, channels = frame.shape
    out = np.empty((height, width, channels), frame.dtype)
    stored, target = _pixel_dtypes(frame.dtype, channels)
    pixel_view = out.view(target).reshape(height, width)
    view = pixel_view[::-1 if box.flip_ud else 1, ::-1 if box.flip_lr else 1]
    for row, col in cells:
      tile_top, tile_left = row * frame.tile, col * frame.tile
      tile_height = min(frame.tile, frame_height - tile_top)
      tile_width = min(frame.tile, frame_width - tile_left)
      data = next(tiles)
      if len(data) != tile_height * tile_width * stored.itemsize:
        raise ValueError(
            f'Tile ({row}, {col}) holds {len(data)} bytes, not those of '
            f'{tile_height}x{tile_width}x{channels} {frame.dtype}: the '
            'dataset is damaged (rebuild it with python -m data_prep.build).')
      pixels = np.frombuffer(data, stored).reshape(tile_height, tile_width)
      y0, x0 = max(top, tile_top), max(left, tile_left)
      y1 = min(top + height, tile_top + tile_height)
      x1 = min(left + width, tile_left + tile_width)
      view[y0 - top:y1 - top, x0 - left:x1 - left] = pixels[
          y0 - tile_top:y1 - tile_top, x0 - tile_left:x1 - tile_left]
    crops.append(out)
  return crops


def _pixel_dtypes(dtype: str, channels: int) -> tuple[np.dtype, np.dtype]:
  """(stored, in memory) dtypes of one whole pixel, for copying tiles into
  a crop pixel by pixel.

  A pixel as one opaque item (`np.void` of its bytes) when the stored bytes
  are the in-memory ones: a mirrored copy then moves whole pixels, about
  twice as fast as moving each channel (0.5 against 0.95 ms for a 448x448
  RGB crop). On a big-endian machine, uint16 pixels are converted value by
  value (a structured dtype of the channels).
  """
  stored, native = _DTYPES[dtype], np.dtype(dtype)
  if stored == native:
    pixel = np.dtype((np.void, channels * native.itemsize))
    return pixel, pixel
  return (np.dtype([(f'c{i}', stored) for i in range(channels)]),
          np.dtype([(f'c{i}', native) for i in range(channels)]))


def is_tiled(metadata: Any) -> bool:
  """Whether a dataset's metadata describes tiled frames."""
  layout = (metadata or {}).get(LAYOUT_KEY)
  return isinstance(layout, dict) and layout.get('kind') == 'tiles'


def layout_metadata(tile: int = TILE_SIZE) -> dict[str, Any]:
  return {'kind': 'tiles', 'tile_size': tile}


class TiledSceneSource(grain.sources.RandomAccessDataSource):
  """A tiled split read as scene records: scene, evs, camera, height, width,
  source (text as bytes, as TFDS gives it), and `frames`, a tuple of
  `TiledFrame`s (nothing is read until a frame is cropped or decoded)."""

  def __init__(self, tiles: TileRecords, scenes: Sequence[dict[str, Any]],
               tile: int):
    self._tiles = tiles
    self._scenes = list(scenes)
    self._tile = tile

  def __len__(self) -> int:
    return len(self._scenes)

  def __repr__(self) -> str:
    # grain compares reprs when restoring a checkpointed iterator. This is
    # the tile records' repr (dataset name and split), as the scene records'
    # source of the 1.x layout printed it: a split's scenes keep their order
    # and pixels, so an iterator saved over a 1.x dataset resumes the same
    # sample stream over its rebuild.
    return repr(self._tiles)

  def __getitem__(self, index: int) -> dict[str, Any]:
    entry = self._scenes[index]
    shape = (entry['height'], entry['width'], entry['channels'])
    per_frame = np.prod(grid(entry['height'], entry['width'], self._tile))
    frames = tuple(
        TiledFrame(self._tiles, entry['first_record'] + i * int(per_frame),
                   shape, dtype, self._tile)
        for i, dtype in enumerate(entry['dtypes']))
    # Text as bytes, as TFDS gives Text features.
    return {'scene': entry['scene'].encode(), 'frames': frames,
            'evs': np.asarray(entry['evs'], np.float32),
            'camera': entry['camera'].encode(),
            'height': np.int32(entry['height']),
            'width': np.int32(entry['width']),
            'source': entry['source'].encode()}


def scene_source(records: Any, metadata: Any, split: str,
                 remote: bool = False) -> Any:
  """A prepared split as scene records: a `TiledSceneSource` over its tile
  `records` (a TFDS data source; `remote`: its files are in a bucket) when
  the dataset's metadata describes tiles, else `records`."""
  if not is_tiled(metadata):
    return records
  return TiledSceneSource(TileRecords(records, remote),
                          metadata[SCENE_TABLE][split],
                          tile=metadata[LAYOUT_KEY]['tile_size'])
