"""Tests of the training and evaluation inputs (expcorr_jax.input_pipeline).

Most tests read in-memory sources: Python lists of records in the datasets'
feature formats, whose PNG frames encode where they came from. Channel 0 of
every pixel holds the scene (or pair) index, channel 1 the frame index (the
position in `evs`; for paired records 0 = input, 1 = target) and channel 2 the
pixel's position `y * width + x` in the uncropped frame. A test can therefore
decode, from any batch element, which scene and frame it shows and exactly
which crop box and flips were applied.

One module-scoped fixture builds the real 'multi_exposure/sample' TFDS dataset
(array_record, ~10 s) for the end-to-end tests through `build.data_source`.
"""

import gc
import itertools
import time

from absl import flags
import grain
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from data_prep import build
from data_prep import ev_tags
from data_prep import image_codec
from expcorr_jax import input_pipeline
from expcorr_jax.tasks import uec as uec_task

HEIGHT, WIDTH = 12, 16  # HEIGHT * WIDTH <= 256: positions fit in a uint8.
EVS = (-1.5, -1.0, 0.0, 1.0, 1.5)
CROP = 8
POSITIONS = np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH)


def frame_image(index: int, frame: int, height: int = HEIGHT,
                width: int = WIDTH) -> np.ndarray:
  """A frame whose pixels say (index, frame, own position)."""
  image = np.empty((height, width, 3), np.uint8)
  image[..., 0] = index
  image[..., 1] = frame
  image[..., 2] = np.arange(height * width).reshape(height, width)
  return image


def scene_records(num_scenes: int, evs=EVS, height: int = HEIGHT,
                  width: int = WIDTH) -> list[dict]:
  """multi_exposure records (scene, PNG frames, ascending evs)."""
  return [{
      'scene': f'scene_{s}'.encode(),
      'frames': [image_codec.encode_png(frame_image(s, f, height, width))
                 for f in range(len(evs))],
      'evs': np.asarray(evs, np.float32),
  } for s in range(num_scenes)]


PAIR_TAGS = ('N1.5', 'N1', 'P1', 'P1.5')


def paired_records(num_pairs: int) -> list[dict]:
  """Paired records (msec layout's features) with encoded input/target."""
  records = []
  for r in range(num_pairs):
    tag = PAIR_TAGS[r % len(PAIR_TAGS)]
    records.append({
        'name': f'pair{r}_{tag}'.encode(), 'scene': f'pair{r}'.encode(),
        'input': image_codec.encode_png(frame_image(r, 0)),
        'target': image_codec.encode_png(frame_image(r, 1)),
        'ev_tag': tag.encode(), 'ev': np.float32(ev_tags.tag_to_ev(tag)),
        'other_targets': [], 'other_target_names': [],
    })
  return records


def constant(image: np.ndarray, channel: int) -> int:
  """The value a channel holds everywhere (fails if it is not constant)."""
  values = np.unique(image[..., channel])
  assert len(values) == 1, f'channel {channel} is not constant: {values}'
  return int(values[0])


def crop_box(image: np.ndarray) -> tuple[int, int, bool, bool]:
  """(top, left, horizontal flip, vertical flip) that produced a crop.

  Undoes each combination of flips and checks that the positions then form
  the window of the uncropped frame starting at the first pixel's position.
  """
  block = image[..., 2].astype(int)
  for hflip in (False, True):
    for vflip in (False, True):
      unflipped = block[:, ::-1] if hflip else block
      unflipped = unflipped[::-1] if vflip else unflipped
      top, left = divmod(int(unflipped[0, 0]), WIDTH)
      window = POSITIONS[top:top + block.shape[0], left:left + block.shape[1]]
      if window.shape == block.shape and np.array_equal(window, unflipped):
        return top, left, hflip, vflip
  raise AssertionError(f'Not a (flipped) window of the frame:\n{block}')


def take(iterator, count: int) -> list[dict[str, np.ndarray]]:
  return [next(iterator) for _ in range(count)]


def assert_batches_equal(actual, expected):
  assert len(actual) == len(expected)
  for step, (got, want) in enumerate(zip(actual, expected)):
    assert got.keys() == want.keys()
    for key in want:
      np.testing.assert_array_equal(got[key], want[key],
                                    err_msg=f'step {step}, {key!r}')


def batches_differ(a, b) -> bool:
  return any(not np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def elements(batches) -> list[dict[str, np.ndarray]]:
  """Batches split into their examples."""
  return [{key: value[i] for key, value in batch.items()}
          for batch in batches for i in range(len(next(iter(batch.values()))))]


def uec_loader(records, *, seed=0, batch=4, crop=CROP, flip=True, **kwargs):
  return uec_task.train_loader(
      records, crop_size=crop, flip=flip, global_batch_size=batch, seed=seed,
      **kwargs)


def paired_loader(source, *, seed=0, batch=4, crop=CROP, flip=True, **kwargs):
  return input_pipeline.paired_train_loader(
      source, crop_size=crop, flip=flip, global_batch_size=batch, seed=seed,
      **kwargs)


# UEC sampler semantics.


def test_uec_sample_semantics():
  """Input/target: one scene, two frames; refs: another scene, lo < hi EV."""
  num_scenes = 4
  batches = take(iter(uec_loader(scene_records(num_scenes), seed=3)), 16)
  assert batches[0]['input'].shape == (4, CROP, CROP, 3)
  assert batches[0]['input'].dtype == np.uint8
  ref_scenes = {s: set() for s in range(num_scenes)}
  flips, boxes, input_frames = set(), set(), set()
  for example in elements(batches):
    scene = constant(example['input'], 0)
    assert constant(example['target'], 0) == scene
    frame_in = constant(example['input'], 1)
    frame_target = constant(example['target'], 1)
    assert frame_in != frame_target
    assert example['input_ev'] == EVS[frame_in]
    assert example['target_ev'] == EVS[frame_target]
    other = constant(example['ref_lo'], 0)
    assert constant(example['ref_hi'], 0) == other
    assert other != scene
    assert example['ref_lo_ev'] == EVS[constant(example['ref_lo'], 1)]
    assert example['ref_hi_ev'] == EVS[constant(example['ref_hi'], 1)]
    assert example['ref_lo_ev'] < example['ref_hi_ev']
    # One crop box and one flip per scene pair.
    box = crop_box(example['input'])
    assert crop_box(example['target']) == box
    ref_box = crop_box(example['ref_lo'])
    assert crop_box(example['ref_hi']) == ref_box
    ref_scenes[scene].add(other)
    input_frames.add(frame_in)
    boxes.update((box[:2], ref_box[:2]))
    flips.update((box[2:], ref_box[2:]))
  # Every other scene serves as a reference (no off-by-one in the choice),
  # every frame as an input, and crops and flips really vary.
  for scene, others in ref_scenes.items():
    assert others == set(range(num_scenes)) - {scene}
  assert input_frames == set(range(len(EVS)))
  assert flips == {(False, False), (False, True), (True, False), (True, True)}
  assert len(boxes) > 5


def test_uec_sample_without_flip_keeps_orientation():
  source = uec_task.IndexedSource(scene_records(3))
  sample = uec_task.UECSample(source, crop_size=CROP, flip=False)
  for seed in range(20):
    example = sample.random_map(source[seed % 3], np.random.default_rng(seed))
    for key in ('input', 'target', 'ref_lo', 'ref_hi'):
      assert crop_box(example[key])[2:] == (False, False)


def test_uec_sample_without_crop_keeps_full_frames():
  source = uec_task.IndexedSource(scene_records(2))
  sample = uec_task.UECSample(source, crop_size=None, flip=False)
  example = sample.random_map(source[1], np.random.default_rng(0))
  for key in ('input', 'target', 'ref_lo', 'ref_hi'):
    np.testing.assert_array_equal(example[key][..., 2], POSITIONS)


def test_uec_sample_upscales_frames_smaller_than_the_crop():
  """6x10 frames, crop 8: bilinear to 8x13 (aspect kept), then an 8x8 crop."""
  records = scene_records(3, height=6, width=10)
  batches = take(iter(uec_loader(records, crop=CROP, flip=False)), 2)
  for example in elements(batches):
    for key in ('input', 'target', 'ref_lo', 'ref_hi'):
      assert example[key].shape == (CROP, CROP, 3)
    # Constant channels survive bilinear upscaling exactly.
    assert constant(example['input'], 0) == constant(example['target'], 0)
    assert example['input_ev'] == EVS[constant(example['input'], 1)]


def test_crop_and_flip_upscale_matches_bilinear_resize():
  rng = np.random.default_rng(0)
  first = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
  second = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
  upscaled = [np.asarray(Image.fromarray(image).resize((13, 8),
                                                       Image.BILINEAR))
              for image in (first, second)]
  lefts = set()
  for seed in range(12):
    crops = input_pipeline.crop_and_flip(
        [first, second], np.random.default_rng(seed), CROP, flip=False)
    matches = [left for left in range(13 - CROP + 1)
               if np.array_equal(crops[0], upscaled[0][:, left:left + CROP])]
    assert len(matches) == 1
    np.testing.assert_array_equal(
        crops[1], upscaled[1][:, matches[0]:matches[0] + CROP])
    lefts.add(matches[0])
  assert len(lefts) > 1


def test_crop_and_flip_upscales_16_bit_frames():
  image = np.empty((5, 7, 3), np.uint16)
  image[..., 0], image[..., 1], image[..., 2] = 1000, 40001, 65535
  (crop,) = input_pipeline.crop_and_flip([image], np.random.default_rng(0),
                                         CROP, flip=True)
  assert crop.shape == (CROP, CROP, 3) and crop.dtype == np.uint16
  assert [constant(crop, c) for c in range(3)] == [1000, 40001, 65535]


def test_crop_and_flip_rejects_frames_of_different_sizes():
  with pytest.raises(ValueError, match='differ in size'):
    input_pipeline.crop_and_flip(
        [frame_image(0, 0), frame_image(0, 1, height=10)],
        np.random.default_rng(0), CROP, flip=False)


def test_uec_loader_needs_two_scenes():
  with pytest.raises(ValueError, match='at least two scenes'):
    next(iter(uec_loader(scene_records(1), batch=1)))


def test_uec_sample_rejects_bad_scenes():
  single = scene_records(2, evs=(0.0,))
  source = uec_task.IndexedSource(single)
  sample = uec_task.UECSample(source, crop_size=None, flip=False)
  with pytest.raises(ValueError, match='fewer than two frames'):
    sample.random_map(source[0], np.random.default_rng(0))
  repeated = scene_records(2, evs=(0.0, 0.0))
  source = uec_task.IndexedSource(repeated)
  sample = uec_task.UECSample(source, crop_size=None, flip=False)
  with pytest.raises(ValueError, match='repeats an EV'):
    sample.random_map(source[0], np.random.default_rng(0))


# Determinism, worker count, restoring.


def test_same_seed_same_batches_and_each_epoch_covers_every_scene():
  records = scene_records(8)
  first = take(iter(uec_loader(records, seed=7)), 6)
  again = take(iter(uec_loader(records, seed=7)), 6)
  assert_batches_equal(again, first)
  other_seed = take(iter(uec_loader(records, seed=8)), 6)
  assert batches_differ(other_seed, first)
  scenes = [constant(e['input'], 0) for e in elements(first)]
  for epoch in range(3):  # 8 scenes, batches of 4: two batches an epoch.
    assert sorted(scenes[8 * epoch:8 * (epoch + 1)]) == list(range(8))
  assert scenes[:8] != scenes[8:16]  # Reshuffled every epoch.


@pytest.fixture
def parsed_flags():
  """Grain's worker processes read absl flags; the trainer parses them."""
  if flags.FLAGS.is_parsed():
    yield
    return
  flags.FLAGS.mark_as_parsed()
  try:
    yield
  finally:
    flags.FLAGS.unparse_flags()


def _example_key(example) -> tuple:
  return tuple((key, example[key].tobytes()) for key in sorted(example))


def test_worker_processes_produce_the_same_examples(parsed_flags):
  """worker_count=2 yields exactly the examples of worker_count=0.

  Grain batches each worker's share of the sample order (records 0, 2, 4, ...
  and 1, 3, 5, ...) separately, so the examples are regrouped into other
  batches; the first four batches of both hold sample positions 0..15.
  """
  del parsed_flags
  records = scene_records(8)
  in_process = take(iter(uec_loader(records, seed=5)), 4)
  iterator = iter(uec_loader(records, seed=5, worker_count=2))
  try:
    with_workers = take(iterator, 4)
    state = iterator.get_state()
  finally:
    del iterator
    gc.collect()  # Stops the worker processes.
  assert sorted(map(_example_key, elements(with_workers))) == sorted(
      map(_example_key, elements(in_process)))
  # A checkpoint restores only into a loader with the same worker count.
  with pytest.raises(ValueError, match='[Ww]orker count'):
    iter(uec_loader(records, seed=5)).set_state(state)


def _uec_run(seed=0):
  return iter(uec_loader(list(scene_records(6)), seed=seed, batch=4))


def _paired_run(seed=0):
  return iter(paired_loader(
      input_pipeline.SequencePairsSource(list(scene_records(3))), seed=seed,
      batch=4))


@pytest.mark.parametrize('make_iterator', [_uec_run, _paired_run],
                         ids=['uec', 'paired'])
def test_restored_iterator_continues_exactly(make_iterator):
  """A fresh loader (new source objects, as in a resumed run) continues."""
  uninterrupted = take(make_iterator(), 7)
  iterator = make_iterator()
  take(iterator, 3)
  state = iterator.get_state()
  take(iterator, 2)  # Progress after the save must not matter.
  restored = make_iterator()
  restored.set_state(state)
  assert_batches_equal(take(restored, 4), uninterrupted[3:])
  with pytest.raises(ValueError, match='Sampler'):  # Another seed's stream.
    make_iterator(seed=1).set_state(state)


def _checkpoint_manager(directory) -> ocp.CheckpointManager:
  """A manager with the trainer's options (expcorr_jax.checkpointing)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options,
                               item_names=('data',))


def _save_and_restore(directory, iterator, step, fresh_iterator):
  """Saves `iterator` through orbax; restores into `fresh_iterator`."""
  manager = _checkpoint_manager(directory)
  manager.save(step, args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointSave(iterator)), force=True)
  manager.wait_until_finished()
  manager.close()
  manager = _checkpoint_manager(directory)
  assert manager.latest_step() == step
  manager.restore(step, args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointRestore(fresh_iterator)))
  manager.close()


def test_iterator_restored_through_orbax_continues_exactly(tmp_path):
  uninterrupted = take(_uec_run(), 6)
  iterator = _uec_run()
  take(iterator, 2)
  restored = _uec_run()
  _save_and_restore(tmp_path / 'checkpoints', iterator, 2, restored)
  take(iterator, 3)
  assert_batches_equal(take(restored, 4), uninterrupted[2:])


# Sharding over processes.


def test_processes_read_disjoint_shards_covering_all_records():
  """Process i of 2 reads its own half of the records, epoch after epoch."""
  records = scene_records(8)
  shards = []
  for process_index in range(2):
    batches = take(iter(uec_loader(records, batch=4, seed=11,
                                   process_index=process_index,
                                   process_count=2)), 6)
    assert batches[0]['input'].shape[0] == 2  # The global batch of 4 / 2.
    scenes = [constant(e['input'], 0) for e in elements(batches)]
    epochs = [scenes[i:i + 4] for i in range(0, 12, 4)]
    for epoch in epochs:
      assert len(set(epoch)) == 4
      assert set(epoch) == set(epochs[0])
    shards.append(set(epochs[0]))
  assert shards[0].isdisjoint(shards[1])
  assert shards[0] | shards[1] == set(range(8))


def test_paired_processes_read_disjoint_pairs():
  records = paired_records(6)
  seen = []
  for process_index in range(2):
    batches = take(iter(paired_loader(records, batch=2, seed=0,
                                      process_index=process_index,
                                      process_count=2)), 3)
    seen.append({constant(e['input'], 0) for e in elements(batches)})
    assert len(seen[-1]) == 3
  assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(6))


def test_batch_size_not_divisible_by_process_count_raises():
  with pytest.raises(ValueError, match='not divisible by the 2 processes'):
    uec_loader(scene_records(4), batch=3, process_count=2)


def test_too_few_records_for_the_processes_raises():
  with pytest.raises(ValueError, match='cannot be shared by 2 processes'):
    paired_loader(paired_records(1), batch=2, process_count=2)


# Paired sampler and SequencePairsSource.


def test_paired_loader_crops_pairs_alike_and_batches_ev_tags_as_bytes():
  records = paired_records(8)
  batches = take(iter(paired_loader(records, batch=4, seed=2)), 8)
  assert batches[0]['ev_tag'].dtype.kind == 'S'
  assert batches[0]['ev'].dtype == np.float32
  flips = set()
  for example in elements(batches):
    index = constant(example['input'], 0)
    assert constant(example['target'], 0) == index
    assert (constant(example['input'], 1), constant(example['target'], 1)) == (
        0, 1)
    assert example['ev_tag'] == records[index]['ev_tag']
    assert example['ev'] == records[index]['ev']
    box = crop_box(example['input'])
    assert crop_box(example['target']) == box
    flips.add(box[2:])
  assert len(flips) == 4


def test_paired_channel_permutation_reorders_input_and_target_alike():
  records = paired_records(8)
  plain = elements(take(iter(paired_loader(records, batch=4, seed=5)), 6))
  permuted = elements(take(iter(paired_loader(
      records, batch=4, seed=5, channel_permute=True)), 6))
  orders = set()
  for got, want in zip(permuted, plain):
    # Some single channel order maps both permuted images back to the plain
    # loader's: the same crop and flips, one order for input and target.
    matches = [order for order in itertools.permutations(range(3))
               if np.array_equal(got['input'], want['input'][..., order]) and
               np.array_equal(got['target'], want['target'][..., order])]
    assert matches, 'input and target were not permuted alike'
    # Where the position channel (2 in the plain frames) went.
    orders.add(matches[0].index(2))
    assert got['ev_tag'] == want['ev_tag']
  assert orders == {0, 1, 2}


def test_sequence_pairs_source_pairs_every_ev_with_ev_0():
  evs = (-1.0, 0.0, 1.5)
  records = scene_records(2, evs=evs)
  records[1]['scene'] = b'with_under_scores'
  pairs = input_pipeline.SequencePairsSource(records)
  assert len(pairs) == 4
  items = [pairs[i] for i in range(len(pairs))]
  assert [item['name'] for item in items] == [
      'scene_0_N1', 'scene_0_P1.5', 'with_under_scores_N1',
      'with_under_scores_P1.5']
  assert [item['ev_tag'] for item in items] == ['N1', 'P1.5', 'N1', 'P1.5']
  assert [item['ev'] for item in items] == [-1.0, 1.5, -1.0, 1.5]
  assert [item['scene'] for item in items] == ['scene_0', 'scene_0',
                                               'with_under_scores',
                                               'with_under_scores']
  for item, (scene, frame) in zip(items, [(0, 0), (0, 2), (1, 0), (1, 2)]):
    assert item['input'] == records[scene]['frames'][frame]
    assert item['target'] == records[scene]['frames'][1]
  # Another target EV: every other frame is paired with that one.
  to_hi = input_pipeline.SequencePairsSource(records, target_ev=1.5)
  assert [to_hi[i]['name'] for i in range(2)] == ['scene_0_N1', 'scene_0_0']
  assert to_hi[0]['target'] == records[0]['frames'][2]


def test_sequence_pairs_source_errors():
  records = scene_records(3, evs=(-1.0, 0.0, 1.0))
  records[2]['evs'] = np.asarray((-2.0, 0.0, 1.0), np.float32)
  pairs = input_pipeline.SequencePairsSource(records)
  assert pairs[3]['name'] == 'scene_1_P1'  # Scenes before it read fine.
  with pytest.raises(ValueError, match="'scene_2' has EVs .* unlike the first"):
    pairs[4]  # pylint: disable=pointless-statement
  with pytest.raises(ValueError, match='No frame at EV 0.0'):
    input_pipeline.SequencePairsSource(scene_records(2, evs=(-1.0, 1.0)))
  with pytest.raises(ValueError, match='empty'):
    input_pipeline.SequencePairsSource([])


def test_paired_loader_over_sequence_pairs():
  records = scene_records(4)
  batches = take(iter(paired_loader(
      input_pipeline.SequencePairsSource(records), batch=4, seed=1)), 4)
  assert batches[0]['ev_tag'].dtype.kind == 'S'
  for example in elements(batches):
    assert constant(example['input'], 0) == constant(example['target'], 0)
    assert constant(example['target'], 1) == EVS.index(0.0)
    assert example['ev'] == EVS[constant(example['input'], 1)]
    assert example['ev'] != 0.0
    assert example['ev_tag'] == ev_tags.ev_to_tag(float(example['ev'])).encode()
    assert crop_box(example['target']) == crop_box(example['input'])


class CountingSource:
  """A data source that counts its reads."""

  def __init__(self, records):
    self.records = records
    self.reads = 0

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int):
    self.reads += 1
    return self.records[index]


def test_loader_reads_only_a_few_records_ahead():
  """Records are whole scenes (MBs each): no read-ahead of hundreds."""
  source = CountingSource(paired_records(4))
  iterator = iter(paired_loader(source, batch=2))
  next(iterator)
  time.sleep(0.3)  # Lets the read-ahead threads fill their buffer.
  assert 2 <= source.reads <= 3 * 2


def test_sources_have_stable_reprs():
  """Grain rejects a checkpoint when repr(data source) differs on restore."""
  assert repr(uec_task.IndexedSource(scene_records(2))) == repr(
      uec_task.IndexedSource(scene_records(2))) == 'IndexedSource(list)'
  assert repr(input_pipeline.SequencePairsSource(scene_records(1))) == (
      'SequencePairsSource(list, target_ev=0.0)')


# Evaluation pairs.


def test_iterate_eval_pairs_is_ordered_and_full_resolution():
  records = scene_records(3, evs=(-1.0, 0.0, 1.0), height=10, width=14)
  pairs = input_pipeline.SequencePairsSource(records)
  evaluated = list(input_pipeline.iterate_eval_pairs(pairs))
  assert [p.name for p in evaluated] == [
      f'scene_{s}_{tag}' for s in range(3) for tag in ('N1', 'P1')]
  assert [p.ev_tag for p in evaluated] == ['N1', 'P1'] * 3
  for index, pair in enumerate(evaluated):
    scene, frame = divmod(index, 2)
    np.testing.assert_array_equal(
        pair.input, frame_image(scene, 2 * frame, height=10, width=14))
    np.testing.assert_array_equal(
        pair.target, frame_image(scene, 1, height=10, width=14))
  again = list(input_pipeline.iterate_eval_pairs(pairs))
  assert [p.name for p in again] == [p.name for p in evaluated]
  limited = list(input_pipeline.iterate_eval_pairs(pairs, limit=4))
  assert [p.name for p in limited] == [p.name for p in evaluated[:4]]
  assert len(list(input_pipeline.iterate_eval_pairs(pairs, limit=99))) == 6


def test_a_target_of_another_size_is_named_not_stretched():
  record = paired_records(1)[0]
  small = np.random.default_rng(0).integers(0, 256, (6, 8, 3), np.uint8)
  record['target'] = image_codec.encode_png(small)
  with pytest.raises(ValueError, match=r"Pair 'pair0_N1\.5': its target is "
                     r'8x6 but its input is \d+x\d+ after decoding; a pair '
                     'is never stretched'):
    list(input_pipeline.iterate_eval_pairs([record]))
  loader = input_pipeline.PairedSample(crop_size=None, flip=False)
  with pytest.raises(ValueError, match='never stretched'):
    loader.random_map(record, np.random.default_rng(0))


# End to end through the real TFDS dataset.

SAMPLE = 'multi_exposure/sample'


@pytest.fixture(scope='module')
def sample_data_dir(tmp_path_factory):
  """'multi_exposure/sample' built once for this module (array_record)."""
  data_dir = tmp_path_factory.mktemp('tfds')
  build.ensure_prepared(SAMPLE, data_dir)
  return data_dir


def test_sample_dataset_uec_loader_restores_through_orbax(sample_data_dir,
                                                          tmp_path):
  def run():
    source = build.data_source(SAMPLE, 'train', sample_data_dir)
    return iter(uec_loader(source, seed=4, batch=2, crop=64))

  uninterrupted = take(run(), 3)
  for batch in uninterrupted:
    assert batch['input'].shape == (2, 64, 64, 3)
    assert batch['ref_hi'].dtype == np.uint8
    assert np.all(batch['ref_lo_ev'] < batch['ref_hi_ev'])
    assert np.all(batch['input_ev'] != batch['target_ev'])
    assert set(batch['input_ev']) <= set(ev_tags.MSEC_EVS)
  iterator = run()
  take(iterator, 1)
  restored = run()
  _save_and_restore(tmp_path / 'checkpoints', iterator, 1, restored)
  assert_batches_equal(take(restored, 2), uninterrupted[1:])


def test_sample_dataset_eval_pairs(sample_data_dir):
  source = build.data_source(SAMPLE, 'validation', sample_data_dir)
  pairs = input_pipeline.SequencePairsSource(source)
  assert len(pairs) == 4 * len(source)
  records = [source[i] for i in range(2)]
  evaluated = list(input_pipeline.iterate_eval_pairs(pairs, limit=8))
  tags = ('N1.5', 'N1', 'P1', 'P1.5')
  assert [p.name for p in evaluated] == [
      f'{r["scene"].decode()}_{tag}' for r in records for tag in tags]
  for index, pair in enumerate(evaluated):
    record = records[index // 4]
    frame = ev_tags.MSEC_EVS.index(ev_tags.tag_to_ev(tags[index % 4]))
    assert pair.input.shape == (record['height'], record['width'], 3)
    np.testing.assert_array_equal(
        pair.input, record['frames'][frame].decode())
    np.testing.assert_array_equal(pair.target, record['frames'][2].decode())


def test_sample_dataset_paired_loader(sample_data_dir):
  source = build.data_source(SAMPLE, 'train', sample_data_dir)
  pairs = input_pipeline.SequencePairsSource(source)
  first = take(iter(paired_loader(pairs, batch=4, seed=0, crop=32)), 2)
  again = take(iter(paired_loader(
      input_pipeline.SequencePairsSource(
          build.data_source(SAMPLE, 'train', sample_data_dir)),
      batch=4, seed=0, crop=32)), 2)
  assert_batches_equal(again, first)
  for batch in first:
    assert batch['input'].shape == batch['target'].shape == (4, 32, 32, 3)
    assert batch['ev_tag'].dtype.kind == 'S'
    for tag, ev in zip(batch['ev_tag'], batch['ev']):
      assert ev_tags.tag_to_ev(tag.decode()) == ev != 0.0
