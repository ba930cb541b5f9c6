"""Tiled frame storage (multi_exposure 2.0.0): crops read only their tiles,
give the pixels of a full decode, and the UEC sampler and training give what
the scene-record layout (1.1.0) gave; splits over TFDS's 1 GB buffer build
without TensorFlow."""

import json

import numpy as np
import pytest
from tensorflow_datasets.core import shuffle
from tensorflow_datasets.proto import tf_example_pb2

import uec_sample_golden  # tests/ is on sys.path.
from data_prep import build
from data_prep import tfds_spill
from data_prep import tiled_frames
from expcorr_jax import input_pipeline

SAMPLE = 'multi_exposure/sample'


class _Tiles:
  """In-memory tile records that count what is read."""

  def __init__(self, examples):
    self.records = [example['tile'] for _, example in examples]
    self.indices_read = []
    self.calls = 0

  def read(self, indices, parallel=False):
    del parallel  # In memory, one way to read.
    self.calls += 1
    self.indices_read += list(indices)
    return [self.records[i] for i in indices]


def _stored(frames, tile=tiled_frames.TILE_SIZE):
  table = tiled_frames.SceneTableWriter(num_scenes=1, tile=tile)
  tiles = _Tiles(table.add_scene(
      {'scene': 's', 'evs': [0.0] * len(frames), 'camera': '', 'source': ''},
      frames))
  return tiled_frames.TiledSceneSource(tiles, table.scenes, tile), tiles


@pytest.mark.parametrize('dtype', [np.uint8, np.uint16])
def test_a_crop_is_the_box_of_the_full_frame(dtype):
  rng = np.random.default_rng(0)
  high = np.iinfo(dtype).max + 1
  frames = [rng.integers(0, high, (301, 250, 3), dtype=dtype)
            for _ in range(3)]
  scenes, _ = _stored(frames, tile=64)
  stored = scenes[0]['frames']
  assert [frame.shape for frame in stored] == [(301, 250, 3)] * 3
  for frame, expected in zip(stored, frames):
    np.testing.assert_array_equal(frame.decode(), expected)
    assert frame.decode().dtype == dtype
    for _ in range(20):
      height, width = rng.integers(1, 250, 2)
      top = rng.integers(0, 301 - height + 1)
      left = rng.integers(0, 250 - width + 1)
      box = expected[top:top + height, left:left + width]
      np.testing.assert_array_equal(frame.crop(top, left, height, width), box)
      flipped = frame.crop(top, left, height, width, flip_lr=True,
                           flip_ud=True)
      np.testing.assert_array_equal(flipped, box[::-1, ::-1])
      assert flipped.flags['C_CONTIGUOUS']
      np.testing.assert_array_equal(
          frame.crop(top, left, height, width, flip_lr=True), box[:, ::-1])
      np.testing.assert_array_equal(
          frame.crop(top, left, height, width, flip_ud=True), box[::-1])
    with pytest.raises(ValueError, match='outside'):
      frame.crop(300, 0, 2, 2)


def test_a_crop_reads_only_the_tiles_it_touches():
  frames = [np.zeros((2000, 3000, 3), np.uint8)] * 2
  scenes, tiles = _stored(frames)
  stored = scenes[0]['frames'][1]
  tiles.indices_read.clear()
  stored.crop(130, 250, 448, 448)  # Rows 1..4, columns 1..5 of 128.
  assert len(tiles.indices_read) == 4 * 5
  columns = -(-3000 // 128)
  first = -(-2000 // 128) * columns  # Frame 1 starts after frame 0.
  assert sorted(tiles.indices_read) == [first + row * columns + col
                                for row in range(1, 5) for col in range(1, 6)]
  # Several frames of a scene: one read for all their tiles (from a
  # bucket, one round trip), each crop as from its own frame.
  tiles.indices_read.clear()
  tiles.calls = 0
  both = tiled_frames.crop_frames(scenes[0]['frames'], 130, 250, 448, 448,
                                  flip_lr=True)
  assert tiles.calls == 1 and len(tiles.indices_read) == 2 * 4 * 5
  for crop, frame in zip(both, scenes[0]['frames']):
    np.testing.assert_array_equal(
        crop, frame.crop(130, 250, 448, 448, flip_lr=True))


def test_two_scenes_crops_in_one_read():
  """A UEC sample's two scenes (own boxes and flips): one read for all
  their tiles, the same crops and random draws as one call per scene."""
  rng = np.random.default_rng(1)
  frames = [rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
            for _ in range(4)]
  scenes, tiles = _stored(frames, tile=64)
  stored = list(scenes[0]['frames'])
  groups = [stored[:2], stored[2:]]
  tiles.calls = 0
  together = input_pipeline.crop_and_flip_groups(
      groups, np.random.default_rng(7), 96, True)
  assert tiles.calls == 1
  draws = np.random.default_rng(7)
  apart = [input_pipeline.crop_and_flip(group, draws, 96, True)
           for group in groups]
  arrays = np.random.default_rng(7)
  from_arrays = [input_pipeline.crop_and_flip(
      [frames[i] for i in range(2 * g, 2 * g + 2)], arrays, 96, True)
                 for g in range(2)]
  for group, group_apart, group_arrays in zip(together, apart, from_arrays):
    for crop, crop_apart, crop_array in zip(group, group_apart, group_arrays):
      np.testing.assert_array_equal(crop, crop_apart)
      np.testing.assert_array_equal(crop, crop_array)


@pytest.mark.parametrize('size', [0, 1, 127, 128, 16383, 16384, 49152,
                                  2**21 + 5])
def test_a_tile_is_taken_out_of_its_record_as_protobuf_parses_it(size):
  """TFDS's serialization of a tile record gives its tile as a view of the
  record's tail; any other serialization of the same Example is parsed."""
  tile = np.random.default_rng(size).integers(0, 256, size, np.uint8)
  example = tf_example_pb2.Example()
  example.features.feature['tile'].bytes_list.value.append(tile.tobytes())
  canonical = example.SerializeToString()
  payload = tiled_frames.tile_payload(canonical)
  assert isinstance(payload, memoryview) and bytes(payload) == tile.tobytes()
  # Valid serializations of the same tile that are not TFDS's: no tail view,
  # the parse gives the tile.
  key = _field(1, b'tile')
  value = _field(2, _field(1, _field(1, tile.tobytes())))
  other = _field(1, b'other') + _field(2, _field(1, b''))
  for entries in ([value + key],  # Value before key.
                  [key + value, other], [other, key + value]):
    record = _field(1, b''.join(_field(1, entry) for entry in entries))
    assert record != canonical
    assert bytes(tiled_frames.tile_payload(record)) == tile.tobytes()
  # The same layout under another key is no tile.
  with pytest.raises(ValueError, match='no .tile. bytes.*rebuild'):
    tiled_frames.tile_payload(canonical.replace(b'\x0a\x04tile',
                                                b'\x0a\x04tilf', 1))


def _field(number: int, data: bytes) -> bytes:
  """A length-delimited protobuf field."""
  length, varint = len(data), b''
  while True:
    byte = length & 0x7F
    length >>= 7
    varint += bytes([byte | (0x80 if length else 0)])
    if not length:
      return bytes([number << 3 | 2]) + varint + data


class _CountingRecords:
  """Stands in for array_record's data source; counts each read method."""

  def __init__(self, records):
    self.records = records
    self.single = self.parallel = 0

  def __len__(self):
    return len(self.records)

  def __getitem__(self, index):
    self.single += 1
    return self.records[index]

  def __getitems__(self, indices):
    self.parallel += 1
    return [self.records[i] for i in indices]


def test_crops_read_records_one_by_one_and_whole_frames_in_parallel():
  """Locally, a crop (what a grain worker reads) costs least read record by
  record; a whole frame (evaluation) and anything from a bucket use
  array_record's parallel reads."""
  frame = np.arange(300 * 400 * 3, dtype=np.uint16).reshape(300, 400, 3)
  table = tiled_frames.SceneTableWriter(num_scenes=1, tile=64)
  serialized = []
  for _, example in table.add_scene(
      {'scene': 's', 'evs': [0.0], 'camera': '', 'source': ''}, [frame]):
    record = tf_example_pb2.Example()
    record.features.feature['tile'].bytes_list.value.append(example['tile'])
    serialized.append(record.SerializeToString())
  for remote in (False, True):
    records = _CountingRecords(serialized)
    tfds_source = type('TfdsSource', (), {'data_source': records})()
    source = tiled_frames.TiledSceneSource(
        tiled_frames.TileRecords(tfds_source, remote), table.scenes, 64)
    stored = source[0]['frames'][0]
    np.testing.assert_array_equal(stored.crop(10, 20, 200, 300),
                                  frame[10:210, 20:320])
    assert (records.single, records.parallel) == ((4 * 5, 0) if not remote
                                                  else (0, 1))
    np.testing.assert_array_equal(stored.decode(), frame)
    assert records.parallel == 1 + remote


def test_a_damaged_tile_is_named():
  scenes, tiles = _stored([np.zeros((10, 10, 3), np.uint8)])
  tiles.records[0] = b'short'
  with pytest.raises(ValueError, match='damaged.*rebuild'):
    scenes[0]['frames'][0].decode()


def test_sampler_and_loss_curve_equal_the_scene_record_layout(
    sample_data_dir, tmp_path):
  """The same seed gives the same UEC samples, bit for bit, as multi_exposure
  1.1.0 did (whole frames decoded, then cropped), for crops inside the
  frame, crops the frame must be upscaled for, whole-frame resizes and the
  EV 0 frame; and an 8-step training run the same loss at every step."""
  golden = json.loads(uec_sample_golden.GOLDEN.read_text())
  assert uec_sample_golden.loader_digests(sample_data_dir) == golden['loader']
  losses = uec_sample_golden.training_losses(sample_data_dir,
                                             str(tmp_path / 'workdir'))
  np.testing.assert_allclose(losses, golden['losses'], rtol=1e-6)


def test_eval_pairs_are_whole_frames(sample_data_dir):
  source = build.data_source(SAMPLE, 'validation', sample_data_dir)
  pairs = input_pipeline.SequencePairsSource(source)
  pair = input_pipeline.read_eval_pair(pairs, 0)
  record = source[0]
  assert pair.input.shape == (record['height'], record['width'], 3)
  np.testing.assert_array_equal(pair.target, record['frames'][2].decode())


def test_a_split_over_the_memory_buffer_builds_without_tensorflow(
    sample_data_dir, tmp_path, monkeypatch):
  """TFDS spills a split bigger than its buffer (1 GB) to bucket files; its
  own bucket class writes them with tf.io.gfile. With a 64 KiB buffer the
  sample spills, and must equal the in-memory build."""
  tfds_spill.install()
  monkeypatch.setattr(shuffle, 'MAX_MEM_BUFFER_SIZE', 64 << 10)
  spilled_dir = tmp_path / 'spilled'
  build.ensure_prepared(SAMPLE, spilled_dir)
  assert not list(spilled_dir.rglob('bucket_*.tmp'))
  for split in ('train', 'validation'):
    spilled = build.data_source(SAMPLE, split, spilled_dir)
    reference = build.data_source(SAMPLE, split, sample_data_dir)
    assert len(spilled) == len(reference)
    for index in range(len(spilled)):
      got, expected = spilled[index], reference[index]
      assert got['scene'] == expected['scene']
      for frame, expected_frame in zip(got['frames'], expected['frames']):
        np.testing.assert_array_equal(frame.decode(), expected_frame.decode())


def test_an_older_layout_is_refused_with_the_rebuild_command(tmp_path):
  old = tmp_path / 'data' / 'multi_exposure' / 'raw' / '1.1.0'
  old.mkdir(parents=True)
  (old / 'dataset_info.json').write_text('{}')
  with pytest.raises(build.DatasetNotPreparedError,
                     match=r'(?s)1\.1\.0 of another storage layout.*'
                     r'python -m data_prep\.build --dataset=multi_exposure/raw'):
    build.data_source('multi_exposure/raw', 'train', tmp_path / 'data')


def test_a_split_slice_of_tiles_is_refused(sample_data_dir):
  with pytest.raises(ValueError, match='whole split'):
    build.data_source(SAMPLE, 'train[:2]', sample_data_dir)
