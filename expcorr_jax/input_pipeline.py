"""Training and evaluation inputs: grain over TFDS array_record data sources.

The shared pieces every method's loader is built from (a method's own
sampler lives in its task, `Task.make_train_loader`):
- `make_train_loader`: a grain loader of this process's batch slices for
  any sampler (a `grain.transforms.RandomMap` over the records);
- the paired sampler (`paired_train_loader`, `PairedSample`): (input,
  target, EV tag), from a paired dataset (msec, sice, lcdp, lol) or from a
  multi-exposure one read as pairs (every EV != 0 frame -> the EV 0 one, or
  another target EV: `as_pairs`);
- `crop_and_flip` (one crop box and flip for several frames) and `decode`;
- evaluation pairs (`EvalPair`, `iterate_eval_pairs`, ...).

Randomness comes only from grain's per-record generators, seeded by the config
seed and the record's position in the global sample order, so the same seed
gives the same examples whatever the worker count, and a restored iterator
continues exactly where the saved one stopped. With workers, grain batches each
worker's share of the sample order on its own, so which examples share a batch
depends on `worker_count` (same seed and worker count: same batches), and a
checkpoint restores only into a loader with the same seed, worker count and
data source (grain compares their reprs, hence the `__repr__`s below, which
must not change between runs). Each process reads its own
shard of records (`ShardOptions`) and yields its slice of the global batch,
which the trainer assembles with `jax.make_array_from_process_local_data`.

Images stay uint8/uint16 until they reach the device (4x less to move).
"""

import dataclasses
from typing import Any, Iterator, Sequence

import grain
import numpy as np
from PIL import Image

from data_prep import ev_tags
from data_prep import image_codec
from data_prep import mixed_exposure
from data_prep import tiled_frames


def decode(frame: bytes | tiled_frames.TiledFrame) -> np.ndarray:
  """A whole frame's pixels: encoded image bytes (paired datasets) or a
  stored frame of a tiled multi-exposure dataset."""
  if isinstance(frame, tiled_frames.TiledFrame):
    return frame.decode()
  return image_codec.decode_image(frame)


def as_frame(frame: bytes | tiled_frames.TiledFrame
             ) -> np.ndarray | tiled_frames.TiledFrame:
  """What `crop_and_flip` takes: encoded bytes decoded, a stored frame as
  it is (it decodes only the crop)."""
  if isinstance(frame, tiled_frames.TiledFrame):
    return frame
  return decode(frame)


def text(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def source_repr(source: Any) -> str:
  """A repr stable across runs (grain checks it when restoring a checkpoint).

  In-memory sources are named by type, as grain names them, so the repr does
  not print the data.
  """
  if isinstance(source, (list, tuple, np.ndarray)):
    return type(source).__name__
  return repr(source)


def resize_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
  """An HxWx3 uint8/uint16 image resized with Pillow's bilinear filter
  (antialiased when shrinking, as torchvision's `Resize` of a PIL image)."""
  size = (width, height)
  if image.dtype == np.uint8:
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
  channels = [
      np.asarray(Image.fromarray(image[..., c].astype(np.float32)).resize(
          size, Image.BILINEAR)) for c in range(image.shape[-1])
  ]
  return np.round(np.stack(channels, -1)).astype(image.dtype)


def _fit_to_crop(image: np.ndarray, crop_size: int) -> np.ndarray:
  """Upscales (bilinear, aspect kept) an image whose short side < crop."""
  height, width = image.shape[:2]
  if min(height, width) >= crop_size:
    return image
  scale = crop_size / min(height, width)
  return resize_bilinear(image, max(crop_size, round(width * scale)),
                         max(crop_size, round(height * scale)))


Frames = Sequence[np.ndarray | tiled_frames.TiledFrame]


def crop_and_flip(images: Frames, rng: np.random.Generator,
                  crop_size: int | None, flip: bool,
                  resize_to: int | None = None) -> list[np.ndarray]:
  """One random crop box and flip, shared by images of one scene.

  Images are arrays or stored frames (`as_frame`); a stored frame decodes
  only the crop box, which holds the same pixels as the box of its full
  decode, so the result does not depend on which is given.

  `resize_to` first resizes every image to resize_to x resize_to, aspect
  ignored (UEC's official radiometry loader: 448); it draws no random
  number, so the crops and flips are as without it.
  """
  return crop_and_flip_groups([images], rng, crop_size, flip, resize_to)[0]


def crop_and_flip_groups(groups: Sequence[Frames], rng: np.random.Generator,
                         crop_size: int | None, flip: bool,
                         resize_to: int | None = None
                         ) -> list[list[np.ndarray]]:
  """`crop_and_flip` of each group in turn (e.g. two scenes of a sample).

  The same random numbers in the same order as one call per group, so the
  same crops; but when every frame is stored (tiles of one split), all
  groups' tiles are fetched in one read: from a bucket, one round trip for
  the whole sample instead of one per group.
  """
  plans = [_plan_crop(images, rng, crop_size, flip, resize_to)
           for images in groups]
  stored = [image for plan in plans for image in plan[0]]
  if (crop_size and stored and
      all(isinstance(image, tiled_frames.TiledFrame) for image in stored) and
      all(image.tiles is stored[0].tiles for image in stored)):
    boxes = [box for images, box in plans for _ in images]
    crops = iter(tiled_frames.crop_frames_in_boxes(stored, boxes))
    return [[next(crops) for _ in images] for images, _ in plans]
  return [_crop(images, box, crop_size) for images, box in plans]


def _plan_crop(images: Frames, rng: np.random.Generator,
               crop_size: int | None, flip: bool, resize_to: int | None
               ) -> tuple[list[Any], tiled_frames.CropBox]:
  """(images, box): the random box and flips of one group, drawn in the
  order `crop_and_flip` always drew them, and its images (decoded when the
  whole frame is needed)."""
  shapes = {tuple(image.shape) for image in images}
  if len(shapes) != 1:
    raise ValueError(f'Frames of one scene differ in size: {sorted(shapes)}.')
  height, width = next(iter(shapes))[:2]
  images = list(images)
  if resize_to or not crop_size or min(height, width) < crop_size:
    # The whole frame is needed (resized, upscaled or kept whole).
    images = [decode(image) if isinstance(image, tiled_frames.TiledFrame)
              else image for image in images]
  if resize_to:
    images = [resize_bilinear(image, resize_to, resize_to) for image in images]
  top = left = 0
  if crop_size:
    images = [_fit_to_crop(image, crop_size) for image in images]
    height, width = images[0].shape[:2]
    top = int(rng.integers(height - crop_size + 1))
    left = int(rng.integers(width - crop_size + 1))
  flip_lr = flip and rng.random() < 0.5
  flip_ud = flip and rng.random() < 0.5
  size = crop_size or 0
  return images, tiled_frames.CropBox(top, left, size, size, flip_lr, flip_ud)


def _crop(images: list[Any], box: tiled_frames.CropBox,
          crop_size: int | None) -> list[np.ndarray]:
  """The planned crops of one group, arrays and stored frames alike."""
  if not crop_size:
    return [_flipped(image, box.flip_lr, box.flip_ud) for image in images]
  if all(isinstance(image, tiled_frames.TiledFrame) for image in images):
    # Stored frames of one scene: their tiles in one read.
    return tiled_frames.crop_frames_in_boxes(images, [box] * len(images))
  top, left = box.top, box.left
  return [image.crop(top, left, crop_size, crop_size, flip_lr=box.flip_lr,
                     flip_ud=box.flip_ud)
          if isinstance(image, tiled_frames.TiledFrame) else _flipped(
              image[top:top + crop_size, left:left + crop_size],
              box.flip_lr, box.flip_ud) for image in images]


def _flipped(image: np.ndarray, flip_lr: bool, flip_ud: bool) -> np.ndarray:
  return np.ascontiguousarray(
      image[::-1 if flip_ud else 1, ::-1 if flip_lr else 1])


class SequencePairsSource(grain.sources.RandomAccessDataSource):
  """A multi-exposure dataset read as pairs: each EV != target frame -> target.

  Every scene must hold the same EV list (the builders guarantee it); a scene
  that does not is reported when it is read.
  """

  def __init__(self, source, target_ev: float = 0.0):
    self._source = source
    if not len(source):
      raise ValueError('The multi-exposure dataset is empty.')
    self._evs = np.asarray(source[0]['evs'], np.float32)
    if target_ev not in self._evs:
      raise ValueError(f'No frame at EV {target_ev} to serve as the target; '
                       f'the dataset has EVs {self._evs.tolist()}.')
    self._target_ev = target_ev
    self._inputs = [i for i, ev in enumerate(self._evs) if ev != target_ev]

  def __len__(self) -> int:
    return len(self._source) * len(self._inputs)

  def __repr__(self) -> str:
    # Stable across runs: grain compares it when restoring a checkpoint.
    return (f'SequencePairsSource({source_repr(self._source)}, '
            f'target_ev={self._target_ev})')

  def __getitem__(self, index: int) -> dict[str, Any]:
    scene_index, slot = divmod(index, len(self._inputs))
    record = self._source[scene_index]
    evs = np.asarray(record['evs'], np.float32)
    if not np.array_equal(evs, self._evs):
      raise ValueError(f'Scene {text(record["scene"])!r} has EVs '
                       f'{evs.tolist()}, unlike the first scene\'s '
                       f'{self._evs.tolist()}.')
    frame = self._inputs[slot]
    target = int(np.flatnonzero(evs == self._target_ev)[0])
    tag = ev_tags.ev_to_tag(float(evs[frame]))
    scene = text(record['scene'])
    return {'name': f'{scene}_{tag}', 'scene': scene,
            'input': record['frames'][frame], 'target': record['frames'][target],
            'ev_tag': tag, 'ev': evs[frame]}


def _match_size(target, shape: tuple[int, ...], name: str = ''):
  """The target, checked to have its input's size (never stretched).

  The builders leave mismatched pairs out, so this fails only on a dataset
  built by an older version or by other code.
  """
  if target.shape[:2] != shape[:2]:
    raise ValueError(
        f'Pair {name!r}: its target is {target.shape[1]}x{target.shape[0]} '
        f'but its input is {shape[1]}x{shape[0]} after decoding; a pair is '
        'never stretched to fit. Rebuild the dataset (python -m '
        'data_prep.build), which reports and leaves out such pairs.')
  return target


def as_pairs(source, dataset_name: str, target_ev: float = 0.0):
  """A dataset's records as pairs: multi-exposure ones are read as
  (EV != target_ev -> EV target_ev) pairs (`config.data.target_ev`), paired
  datasets (msec, sice, lcdp, lol) are pairs already."""
  if dataset_name.split('/')[0] == 'multi_exposure':
    return SequencePairsSource(source, target_ev=float(target_ev))
  return source


@dataclasses.dataclass
class PairedSample(grain.transforms.RandomMap):
  """Paired record -> cropped/flipped (input, target, ev, ev_tag).

  With `channel_permute`, one random order of the RGB channels is applied to
  both images of a pair (an augmentation; see `config.data.channel_permute`).
  It is drawn after the crop and flips, so the crops and flips of a seed are
  the same with it on or off.
  """
  crop_size: int | None
  flip: bool
  channel_permute: bool = False

  def random_map(self, record, rng: np.random.Generator) -> dict[str, Any]:
    image_in = as_frame(record['input'])
    target = _match_size(as_frame(record['target']), image_in.shape,
                         text(record['name']))
    image_in, target = crop_and_flip([image_in, target], rng, self.crop_size,
                                     self.flip)
    if self.channel_permute:
      order = rng.permutation(3)
      image_in, target = (np.ascontiguousarray(image[..., order])
                          for image in (image_in, target))
    return {'input': image_in, 'target': target,
            'ev': np.float32(record['ev']),
            'ev_tag': np.bytes_(text(record['ev_tag']).encode())}


def make_train_loader(source, transform: grain.transforms.RandomMap, *,
                      global_batch_size: int, seed: int, worker_count: int = 0,
                      process_index: int = 0,
                      process_count: int = 1) -> grain.DataLoader:
  """An endless, shuffled, process-sharded loader of per-process batches."""
  if global_batch_size % process_count:
    raise ValueError(f'batch_size {global_batch_size} is not divisible by the '
                     f'{process_count} processes; make it a multiple.')
  local_batch_size = global_batch_size // process_count
  shard = grain.sharding.ShardOptions(
      shard_index=process_index, shard_count=process_count,
      drop_remainder=True)
  if len(source) < process_count:
    raise ValueError(f'{len(source)} records cannot be shared by '
                     f'{process_count} processes.')
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=shard, shuffle=True,
      num_epochs=None, seed=seed)
  # A record is a whole scene (several full-resolution encoded frames, MBs to
  # hundreds of MBs); grain's default read-ahead of 500 records, meant for
  # records of a few KiB, would hold hundreds of them in memory in every
  # worker. Two batches ahead keep the decoding fed.
  read_ahead = 2 * local_batch_size
  return grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=[transform,
                  grain.transforms.Batch(local_batch_size,
                                         drop_remainder=True)],
      worker_count=worker_count,
      read_options=grain.ReadOptions(num_threads=min(16, read_ahead),
                                     prefetch_buffer_size=read_ahead))


def paired_train_loader(source, *, crop_size: int | None, flip: bool,
                        channel_permute: bool = False,
                        **loader_kwargs) -> grain.DataLoader:
  return make_train_loader(
      source, PairedSample(crop_size, flip, channel_permute), **loader_kwargs)


@dataclasses.dataclass(frozen=True)
class EvalPair:
  """One evaluation pair at full resolution.

  Attributes:
    name: the input's name, unique in the split.
    ev_tag: its exposure tag ('' where the dataset has none).
    input: the decoded input image.
    target: the decoded target, at the input's size.
    other_targets: (name, encoded bytes) of further ground truths of the
      scene (MSEC test: experts a, b, d, e), decoded only by the protocols
      that score against them (`decode_other_target`).
    ev_map: for mixed-exposure data, the input's EV map at full resolution
      (float64 HxW, `data_prep.mixed_exposure.expand`); else None.
  """
  name: str
  ev_tag: str
  input: np.ndarray
  target: np.ndarray
  other_targets: tuple[tuple[str, bytes], ...] = ()
  ev_map: np.ndarray | None = None


def decode_other_target(pair: EvalPair, data: bytes) -> np.ndarray:
  """One of `pair.other_targets`, decoded to the input's size."""
  return _match_size(decode(data), pair.input.shape, pair.name)


def num_eval_pairs(pairs_source, limit: int | None = None) -> int:
  """How many pairs an evaluation reads: all, or the first `limit`."""
  return len(pairs_source) if limit is None else min(limit, len(pairs_source))


def read_eval_pair(pairs_source, index: int) -> EvalPair:
  """Pair `index` at full resolution (no crops, no flips), decoded."""
  record = pairs_source[index]
  image_in = decode(record['input'])
  others = tuple(zip((text(name) for name in
                      record.get('other_target_names', ())),
                     record.get('other_targets', ())))
  ev_map = None
  if 'ev_map' in record:
    ev_map = mixed_exposure.expand(record['ev_map'], *image_in.shape[:2])
  return EvalPair(name=text(record['name']), ev_tag=text(record['ev_tag']),
                  input=image_in, ev_map=ev_map,
                  target=_match_size(decode(record['target']), image_in.shape,
                                     text(record['name'])),
                  other_targets=others)


def eval_pair_label(pairs_source, index: int) -> tuple[str, str]:
  """(name, EV tag) of pair `index`, without decoding its images."""
  record = pairs_source[index]
  return text(record['name']), text(record['ev_tag'])


def iterate_eval_pairs(pairs_source, *,
                       limit: int | None = None) -> Iterator[EvalPair]:
  """Full-resolution evaluation pairs in a fixed order (no crops, no flips)."""
  for index in range(num_eval_pairs(pairs_source, limit)):
    yield read_eval_pair(pairs_source, index)
