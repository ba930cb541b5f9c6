"""The task contract: what training, evaluation and inference know of a method.

A method is three files:
- `expcorr_jax/models/<name>.py`: its Flax Linen network(s);
- `expcorr_jax/tasks/<name>.py`: its task, a module-level `TASK = Task(...)`
  (loss, train sampler, how it corrects an image, its own evaluation
  protocols, its inference hooks), plus any helpers it alone uses;
- `configs/<name>.py`: its config, with `config.model = '<name>'`.

`expcorr_jax.tasks.get_task(config.model)` finds the task: a bare name is
the module `expcorr_jax.tasks.<name>`, a dotted name (`my_lab.my_method`) is
a module of the user's own package; either way its `TASK` is used. Shared
code (train.py, evaluation.py, inference.py, the CLIs) only ever calls the
fields below, so a new method edits no shared module.

Types used throughout:
- params: the trained pytree (Flax 'params' collection), checkpointed.
- frozen: a pytree the loss reads but never trains (e.g. RECNet's VGG16),
  loaded once per run by `Task.load_frozen` and passed to every train step
  as an argument (not baked into the compiled program).
- batch: the dict of arrays the train loader yields, its integer images
  converted to float32 in [0, 1] on the device (`pixels.to_float`) before
  `loss_fn` sees them.
- images: NHWC float32 in [0, 1]; a reference is float32 in [0, 1], 1HWC
  (one for the whole batch) or NHWC (one per image: evaluation batches
  images of one size whose protocol gave them different references).

Evaluation: each name in `config.eval.protocols` is one of the method's own
`Task.protocols` or a shared protocol (`expcorr_jax.protocols`: 'full',
'enc_fecnet', 'edges', 'full_experts', 'mixed_regions'). A `Protocol` prepares a pair for the model (resizing, the
reference) and says how the float output becomes uint8 and how it is
scored; the method supplies only `Task.correct`.

Regularisers: a corrector-independent loss term (ERL's sample-relationship
regulariser) is a `Regulariser`, found by `config.regulariser.name` the same
way as a task (its module's `REGULARISER`). It sees the `output` and
`target` a task's `loss_fn` returns in its `LossOutput`; a task whose loss
returns none cannot be regularised (the trainer says so).
"""

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np

Config = ml_collections.ConfigDict
Params = Any


class LossOutput(NamedTuple):
  """What `Task.loss_fn` returns.

  Attributes:
    loss: the scalar to minimise.
    metrics: scalars to log (means over the logging interval).
    output: the corrected batch (NHWC) a regulariser should compare with
      `target`; None if the method has no such output.
    target: its normal-exposure ground truth, same shape; None alike.
  """
  loss: jax.Array
  metrics: Mapping[str, jax.Array]
  output: jax.Array | None = None
  target: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class PreparedPair:
  """One evaluation pair made ready for a correction under a protocol.

  Attributes:
    model_input: HxWx3 float32 in [0, 1], what the model corrects.
    reference: HxWx3 float32 in [0, 1] for methods that take a reference
      (`Task.needs_reference`), else None.
    shown_input: uint8 HxWx3, the input as scored for the identity baseline
      and shown in the image grid.
    target: uint8, the ground truth at the size of the output.
    other_targets: (name, uint8 image) of further ground truths the output
      is also scored against (a protocol with `target_names`, e.g. MSEC's
      five experts), each at the size of the output; empty otherwise.
    regions: (name, bool HxW mask) of image regions scored on their own (a
      protocol with `region_names`, e.g. the under- and over-exposed parts
      of a mixed-exposure input); empty otherwise.
  """
  model_input: np.ndarray
  reference: np.ndarray | None
  shown_input: np.ndarray
  target: np.ndarray
  other_targets: tuple[tuple[str, np.ndarray], ...] = ()
  regions: tuple[tuple[str, np.ndarray], ...] = ()


class ScoredImages(NamedTuple):
  """The uint8 images one pair is scored on under one protocol.

  `shown_input` (the identity baseline), `output` and `target` share a size;
  `other_targets` and `regions` as in `PreparedPair`.
  """
  shown_input: np.ndarray
  output: np.ndarray
  target: np.ndarray
  other_targets: tuple[tuple[str, np.ndarray], ...] = ()
  regions: tuple[tuple[str, np.ndarray], ...] = ()


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How a pair is corrected and scored (one column set of a paper's table).

  Attributes:
    name: the key in `config.eval.protocols` and in reports.
    prepare: (EvalPair, reference HxWx3 float32 or None) -> PreparedPair.
    quantise: the model's float output (HxWx3) -> uint8 scored pixels,
      usually `pixels.to_uint8` (rounding); a protocol that truncates says
      so here.
    ssim_color: 'rgb' (SSIM averaged over the channels) or 'gray' (SSIM of
      the rounded BT.601 luma).
    lpips: whether to compute LPIPS-VGG (costly on a CPU).
    description: one line for reports and the README.
    extra_metrics: (uint8 output, uint8 target) -> {name: value} for
      `extra_metric_names`, computed besides PSNR / SSIM (e.g. the edge
      metrics), for the output and for the identity baseline; None: none.
    extra_metric_names: the names `extra_metrics` returns, in report order.
    target_names: for a protocol scoring each output against several ground
      truths (`PreparedPair.other_targets`): the name of `target` first,
      then the others'. PSNR and SSIM are then the means over all of them,
      and each one's own figures are reported as `psnr_<name>` /
      `ssim_<name>`. Empty: one target.
    region_names: the regions `PreparedPair.regions` holds, in order; PSNR
      and SSIM inside each are reported as `psnr_<region>` /
      `ssim_<region>` (NaN where a pair has no such pixel). Empty: none.
  """
  name: str
  prepare: Callable[[Any, np.ndarray | None], PreparedPair]
  quantise: Callable[[np.ndarray], np.ndarray]
  ssim_color: str = 'rgb'
  lpips: bool = False
  description: str = ''
  extra_metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]] | None = (
      None)
  extra_metric_names: tuple[str, ...] = ()
  target_names: tuple[str, ...] = ()
  region_names: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class InferenceHooks:
  """What `inference.Corrector` needs beyond `Task.correct`.

  Attributes:
    module_type: the network class. A checkpoint's saved config sets its
      fields from `model_<field>` entries (`build_module`), so the network
      is rebuilt exactly as trained.
    load_official: path of an official checkpoint (e.g. a PyTorch `.pth`)
      -> (params, module fields read off the weights); None if the method
      has no official weights.
    check_size: (module, height, width) -> None, raising ValueError with the
      reason for image sizes the network cannot process; None: any size.
  """
  module_type: type[nn.Module]
  load_official: Callable[[str], tuple[Params, dict[str, Any]]] | None = None
  check_size: Callable[[nn.Module, int, int], None] | None = None


@dataclasses.dataclass(frozen=True, eq=False)  # Hashed by identity.
class Task:
  """One method, as the shared code sees it. Required fields first.

  Attributes:
    name: the method's name (`config.model`).
    create_model: config -> the network (an `nn.Module`).
    init_params: (module, rng key) -> fresh trainable params.
    loss_fn: (module, params, float batch, config) -> LossOutput, or
      (module, params, float batch, config, frozen) when the task has
      `load_frozen`. Traced inside the jitted, sharded train step: pure JAX.
    make_train_loader: (config, the train split's data source, **loader
      kwargs) -> an endless grain loader of this process's batch slices;
      the kwargs (global_batch_size, seed, worker_count, process_index,
      process_count) go to `input_pipeline.make_train_loader`.
    correct: (module, params, images) -> corrected images, or (module,
      params, images, reference) when `needs_reference`; pure JAX, jitted
      by the caller. Used by evaluation and by `inference.Corrector`.
    needs_reference: whether `correct` takes a reference image (the
      exposure to correct towards); evaluation reads it from
      `config.eval.reference`.
    protocols: the method's own evaluation protocols, by name (shared ones
      live in `expcorr_jax.protocols`).
    validate_config: config -> None, raising ValueError naming a bad value
      and the fix; runs before anything is built. None: nothing to check
      beyond the shared fields.
    load_frozen: config -> frozen pytree for `loss_fn`; None: no frozen
      params (and loss_fn takes no `frozen` argument).
    correction_params: (params, frozen) -> the params `correct` runs with,
      for methods whose correction also needs frozen params (ERL stage 2
      reconstructs with the frozen stage-1 auto-encoder); None: params.
    inference: hooks for `inference.Corrector`; None: the method's
      checkpoints are not correctors (e.g. ERL's pretext stages).
  """
  name: str
  create_model: Callable[[Config], nn.Module]
  init_params: Callable[[nn.Module, jax.Array], Params]
  loss_fn: Callable[..., LossOutput]
  make_train_loader: Callable[..., Any]
  correct: Callable[..., jax.Array]
  needs_reference: bool = False
  protocols: Mapping[str, Protocol] = dataclasses.field(default_factory=dict)
  validate_config: Callable[[Config], None] | None = None
  load_frozen: Callable[[Config], Any] | None = None
  correction_params: Callable[[Params, Any], Params] | None = None
  inference: InferenceHooks | None = None

  def compute_loss(self, model: nn.Module, params: Params,
                   batch: Mapping[str, jax.Array], config: Config,
                   frozen: Any) -> LossOutput:
    """`loss_fn`, with the frozen params if the task has any."""
    if self.load_frozen is None:
      return self.loss_fn(model, params, batch, config)
    return self.loss_fn(model, params, batch, config, frozen)

  def apply_correction(self, model: nn.Module, params: Params,
                       images: jax.Array,
                       reference: jax.Array | None) -> jax.Array:
    """`correct` with or without the reference, as the method takes it."""
    if self.needs_reference:
      return self.correct(model, params, images, reference)
    return self.correct(model, params, images)


@dataclasses.dataclass(frozen=True)
class Regulariser:
  """A loss term for any corrector, switched on by a `config.regulariser`.

  The block holds `name` (the module to find this in), `weight` and the
  regulariser's own fields. The trainer adds weight * loss(...) to the
  task's loss, logged under the regulariser's name; the frozen params never
  enter the train state or the checkpoint, and inference is unchanged.

  Attributes:
    name: its name (`config.regulariser.name`).
    validate_config: the whole config -> None, raising ValueError with the
      fix (it may load its checkpoint to fail early).
    load_frozen: the `config.regulariser` block -> frozen params.
    loss: (block, frozen, output, target) -> scalar, where output and target
      are the task's `LossOutput.output` and `.target`.
  """
  name: str
  validate_config: Callable[[Config], None]
  load_frozen: Callable[[Config], Any]
  loss: Callable[[Config, Any, jax.Array, jax.Array], jax.Array]


def module_fields(module_type: type[nn.Module]) -> list[str]:
  """The constructor fields of a Flax module class (not parent / name)."""
  return [f.name for f in dataclasses.fields(module_type)
          if f.init and f.name not in ('parent', 'name')]


def build_module(module_type: type[nn.Module], config: Mapping[str, Any],
                 overrides: Mapping[str, Any] | None = None) -> nn.Module:
  """A network from a config's `model_<field>` entries, e.g. RECNet(nc=...).

  Fields the config lacks keep the class's defaults; `overrides` (field
  names, not prefixed) win over the config.

  Raises:
    ValueError: an override names no field of the class.
  """
  fields = module_fields(module_type)
  overrides = dict(overrides or {})
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f'Unknown {module_type.__name__} settings {unknown}; '
                     f'valid: {fields}.')
  kwargs = {f: config[f'model_{f}'] for f in fields if f'model_{f}' in config}
  kwargs.update(overrides)
  return module_type(**kwargs)
