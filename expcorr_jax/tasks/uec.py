"""UEC (ECCV 2024): the task of the unsupervised, reference-steered corrector.

Network: `models/uec.py`. Config: `configs/uec.py`.

Training samples (`UECSample`): two frames of one scene of a multi-exposure
dataset (input, target) plus two frames of ANOTHER scene ordered by exposure
(ref_lo, ref_hi with EV(ref_lo) < EV(ref_hi)): the paper's mutual ground
truths.

Loss (released code): restoration = MSE(three-pass output(input, target),
target), where the target frame is also the reference; monotonicity =
mean(relu(out(input, ref_lo) - out(input, ref_hi))) with single passes and two
references of another scene; an optional total variation term (the paper's,
weight 0.1; off in the released code). When a regulariser needs a
normal-exposure pair (`TrainingNeeds.normal_exposure_pair`, as ERL does) the
sampler also gives the scene's EV 0 frame, and the loss returns the input's
three-pass correction towards that frame with the frame itself (one more
forward pass per step).

Correction: three passes towards a reference image (the official inference).
Evaluation corrects every validation frame towards one fixed reference
(`config.eval.reference`, by default a well-exposed frame of the embedded
sample) under the shared 'full' protocol and UEC's own 'uec256' and
'uec256_aliased' (the official test: input, reference and target converted
to float and resized to 256x256, aspect ignored, with or without
antialiasing; output TRUNCATED to uint8, as the official code does), and
'uec256_experts' ('uec256' scored against each of MSEC's five experts).
"""

import dataclasses
import functools
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from expcorr_jax import input_pipeline
from expcorr_jax import pixels
from expcorr_jax import protocols
from expcorr_jax.models import uec
from expcorr_jax.tasks import contract

class IndexedSource(grain.sources.RandomAccessDataSource):
  """Yields (index, record), so a sampler knows which scene it holds."""

  def __init__(self, source):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int):
    return index, self._source[index]

  def record(self, index: int):
    return self._source[index]

  def __repr__(self) -> str:
    # The default repr holds the object's address, which differs in a resumed
    # run, and grain would reject the checkpoint of the data iterator.
    return f'IndexedSource({input_pipeline.source_repr(self._source)})'


@dataclasses.dataclass
class UECSample(grain.transforms.RandomMap):
  """(index, scene record) -> input/target of that scene + refs of another.

  With `with_normal`, also the scene's frame nearest EV 0 ('normal', cropped
  and flipped with the input), which ERL's regulariser compares against; it
  draws no random number, so every other field is exactly as without it.
  """
  source: IndexedSource
  crop_size: int | None
  flip: bool
  with_normal: bool = False
  resize_to: int | None = None

  def random_map(self, element, rng: np.random.Generator) -> dict[str, Any]:
    index, record = element
    num_scenes = len(self.source)
    if num_scenes < 2:
      raise ValueError('The UEC sampler needs at least two scenes (references '
                       'come from another scene); the dataset has one.')
    evs = np.asarray(record['evs'], np.float32)
    if len(evs) < 2:
      raise ValueError(f'Scene {input_pipeline.text(record["scene"])!r} has '
                       'fewer than two frames; the UEC sampler needs two of '
                       'each scene.')
    input_frame, target_frame = rng.choice(len(evs), size=2, replace=False)
    other = int(rng.integers(num_scenes - 1))
    other += other >= index
    other_record = self.source.record(other)
    other_evs = np.asarray(other_record['evs'], np.float32)
    lo, hi = sorted(rng.choice(len(other_evs), size=2, replace=False),
                    key=lambda i: other_evs[i])
    if other_evs[lo] == other_evs[hi]:
      raise ValueError(f'Scene {input_pipeline.text(other_record["scene"])!r} '
                       'repeats an EV.')
    # Stored frames (or decoded images) go to `crop_and_flip`, which reads
    # only the crop box of a stored frame.
    frame = input_pipeline.as_frame
    frames = record['frames']
    scene_frames = [frame(frames[input_frame]), frame(frames[target_frame])]
    if self.with_normal:
      normal_frame = int(np.argmin(np.abs(evs)))
      scene_frames.append(frame(frames[normal_frame]))
    # One crop box and flip for every frame of a scene; both scenes' tiles
    # are read at once (one round trip to a bucket per sample).
    (image_in, image_target, *normal), (ref_lo, ref_hi) = (
        input_pipeline.crop_and_flip_groups(
            [scene_frames, [frame(other_record['frames'][lo]),
                            frame(other_record['frames'][hi])]],
            rng, self.crop_size, self.flip, self.resize_to))
    sample = {
        'input': image_in, 'target': image_target,
        'ref_lo': ref_lo, 'ref_hi': ref_hi,
        'input_ev': evs[input_frame], 'target_ev': evs[target_frame],
        'ref_lo_ev': other_evs[lo], 'ref_hi_ev': other_evs[hi],
    }
    if self.with_normal:
      sample['normal'] = normal[0]
      sample['normal_ev'] = evs[normal_frame]
    return sample


def train_loader(source, *, crop_size: int | None, flip: bool,
                 with_normal: bool = False, resize_to: int | None = None,
                 **loader_kwargs) -> grain.DataLoader:
  """The UEC sampler over a multi-exposure source, as a grain loader."""
  indexed = IndexedSource(source)
  return input_pipeline.make_train_loader(
      indexed, UECSample(indexed, crop_size, flip, with_normal, resize_to),
      **loader_kwargs)


def validate_config(config: ml_collections.ConfigDict) -> None:
  if config.loss.num_passes < 1:
    raise ValueError('loss.num_passes must be at least 1.')
  resize_to, crop_size = config.data.resize_to, config.data.crop_size
  if resize_to is not None and (resize_to < 16 or (crop_size or 0) >
                                resize_to):
    raise ValueError(
        f'config.data.resize_to={resize_to} must be at least 16 and at least '
        f'crop_size={crop_size}; the official radiometry transform is '
        '--config.data.resize_to=448 --config.data.crop_size=None.')


def create_model(config: ml_collections.ConfigDict) -> uec.UEC:
  return contract.build_module(uec.UEC, config)


def init_params(model: uec.UEC, rng: jax.Array) -> Any:
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  return model.init(rng, x, x, 1, method=uec.UEC.multi_pass)['params']


def make_train_loader(config: ml_collections.ConfigDict, train_source: Any,
                      needs: contract.TrainingNeeds = contract.NO_NEEDS,
                      **loader_kwargs: Any) -> grain.DataLoader:
  if not config.data.name.startswith('multi_exposure'):
    raise ValueError(
        f'UEC trains on multi-exposure sequences, not {config.data.name!r}: '
        "set config.data.name to 'multi_exposure/sample', "
        "'multi_exposure/raw' (with data.manual_dir) or another "
        'multi_exposure config.')
  return train_loader(train_source, crop_size=config.data.crop_size,
                      flip=config.data.flip,
                      with_normal=needs.normal_exposure_pair,
                      resize_to=config.data.resize_to,
                      **loader_kwargs)


def total_variation(images: jax.Array) -> jax.Array:
  """Mean squared horizontal and vertical differences (the paper's TV)."""
  dy = images[:, 1:] - images[:, :-1]
  dx = images[:, :, 1:] - images[:, :, :-1]
  return jnp.mean(dy**2) + jnp.mean(dx**2)


def loss_fn(model: uec.UEC, params: Any, batch: contract.Batch,
            config: ml_collections.ConfigDict, frozen: Any = None,
            needs: contract.TrainingNeeds = contract.NO_NEEDS
            ) -> contract.LossOutput:
  """The loss of a float batch from the UEC sampler (no frozen params).

  With `needs.normal_exposure_pair` (the sampler then gives the scene's EV 0
  frame as 'normal'), the output is the input corrected towards that frame
  (three passes, one more forward pass than UEC's own loss) and the target
  the frame itself, as ERL's paper compares a corrected output with its
  normal-exposure ground truth.
  """
  del frozen  # UEC has none.
  restored, out_lo, out_hi = model.apply(
      {'params': params}, batch['input'], batch['target'], batch['ref_lo'],
      batch['ref_hi'], config.loss.num_passes,
      method=uec.UEC.training_outputs)
  restoration = jnp.mean((restored - batch['target'])**2)
  monotonicity = jnp.mean(jax.nn.relu(out_lo - out_hi))
  loss = (config.loss.restoration_weight * restoration +
          config.loss.monotonicity_weight * monotonicity)
  metrics = {'restoration': restoration, 'monotonicity': monotonicity}
  if config.loss.tv_weight:
    tv = total_variation(restored)
    loss += config.loss.tv_weight * tv
    metrics['tv'] = tv
  if not needs.normal_exposure_pair:
    return contract.LossOutput(loss, metrics)
  towards_normal = model.apply({'params': params}, batch['input'],
                               batch['normal'], config.loss.num_passes,
                               method=uec.UEC.multi_pass)
  return contract.LossOutput(loss, metrics, output=towards_normal,
                             target=batch['normal'])


def correct(model: uec.UEC, params: Any, images: jax.Array,
            reference: jax.Array | None = None) -> jax.Array:
  """The official inference: three passes towards the reference."""
  if reference is None:
    raise ValueError('UEC corrects towards a reference image; none given.')
  return model.apply({'params': params}, images, reference, 3,
                     method=uec.UEC.multi_pass)


_UEC256_SIZE = 256


@functools.partial(jax.jit, static_argnames='antialias')
def _resize_256(image: jax.Array, antialias: bool) -> jax.Array:
  return jax.image.resize(image, (_UEC256_SIZE, _UEC256_SIZE, 3), 'linear',
                          antialias=antialias)


def float_resize_256(image: np.ndarray, antialias: bool) -> np.ndarray:
  """The official test transform: to float (`ToTensor`), then a bilinear
  resize of the float image to 256x256, aspect ignored (`Resize`).

  `antialias`: the triangle filter widened by the downscale factor (PIL's
  and torchvision >= 0.17's default for tensors), or plain two-tap bilinear
  (torchvision before 0.17); half-pixel centres either way.
  """
  return np.asarray(_resize_256(pixels.to_float(image), antialias))


def _uec256_protocol(name: str, antialias: bool,
                     description: str) -> contract.Protocol:
  """The official UEC test: input, reference and target resized to 256x256.

  Input and reference reach the network as resized floats (never
  re-quantised); the target is resized the same way, then rounded to uint8
  (the scored target; the official code's exact target handling is not
  known); the output is TRUNCATED to uint8, as the official test saves it.
  """
  def prepare(pair: input_pipeline.EvalPair,
              reference: np.ndarray | None = None) -> contract.PreparedPair:
    if reference is None:
      raise ValueError(f'Protocol {name!r} resizes the reference too; none '
                       'given.')
    model_input = float_resize_256(pair.input, antialias)
    return contract.PreparedPair(
        model_input=model_input,
        reference=float_resize_256(reference, antialias),
        shown_input=pixels.to_uint8(model_input),
        target=pixels.to_uint8(float_resize_256(pair.target, antialias)))

  # The official evaluation is PyIQA (UEC's README): its `ssimc` is the RGB
  # SSIM, its `ssim` (ssim_y) the one a PyIQA table's SSIM column holds.
  return contract.Protocol(
      name=name, prepare=prepare,
      quantise=lambda output: pixels.to_uint8(output, truncate=True),
      ssim_color='rgb_pyiqa', lpips=False, description=description,
      paper_ssim='ssim_y')


# Which resize the authors ran is not known: torchvision 0.17 (January 2024)
# made tensor resizing antialiased by default, and the code was published in
# May 2024. Both are offered.
UEC256 = _uec256_protocol(
    'uec256', antialias=True,
    description=('the official UEC test with current torchvision: float '
                 'images resized (antialiased) to 256x256, output truncated'))
UEC256_ALIASED = _uec256_protocol(
    'uec256_aliased', antialias=False,
    description=('the official UEC test with torchvision < 0.17: float images '
                 'resized (no antialiasing) to 256x256, output truncated'))

# The UEC paper's MSEC table compares with Afifi et al.'s means over the five
# experts (19.483 / 0.739), so its figure is most likely of this kind.
UEC256_EXPERTS = protocols.against_every_expert(UEC256, 'uec256_experts')

# The encoder's first conv (7x7, stride 2, padding 1) needs 5 columns.
_MIN_ENCODER_WIDTH = 5


def check_size(module: uec.UEC, height: int, width: int) -> None:
  """UEC resizes inputs to (encoder_height, width alike): not too narrow."""
  size = uec.encoder_size(height, width, module.encoder_height)
  if size[1] < _MIN_ENCODER_WIDTH:
    raise ValueError(
        f'A {height}x{width} image is too narrow for UEC: its exposure encoder '
        f'sees it resized to {size[0]}x{size[1]}, and needs at least '
        f'{_MIN_ENCODER_WIDTH} columns (width/height >= '
        f'{_MIN_ENCODER_WIDTH}/{module.encoder_height}).')


TASK = contract.Task(
    name='uec',
    create_model=create_model,
    init_params=init_params,
    loss_fn=loss_fn,
    make_train_loader=make_train_loader,
    correct=correct,
    needs_reference=True,
    protocols={protocol.name: protocol for protocol in (
        UEC256, UEC256_ALIASED, UEC256_EXPERTS)},
    validate_config=validate_config,
    inference=contract.InferenceHooks(
        module_type=uec.UEC,
        load_official=lambda path: (uec.load_official(path), {}),
        check_size=check_size))
