"""The task contract: what training, evaluation and inference know of a method.

A method is three files:
- `expcorr_jax/models/<name>.py`: its Flax Linen network(s);
- `expcorr_jax/tasks/<name>.py`: its task, a module-level `TASK = Task(...)`
  (loss, train sampler, how it corrects an image, its own evaluation
  protocols, its inference hooks), plus any helpers it alone uses;
- `configs/<name>.py`: its config, `base_config.get_config()` extended with
  `config.model = '<name>'` and the method's own fields.

`expcorr_jax.tasks.get_task(config.model)` finds the task: a bare name is
the module `expcorr_jax.tasks.<name>`, a dotted name (`my_lab.my_method`) is
a module of the user's own package; either way its `TASK` is used, and its
`Task.name` must be that name. Shared code (train.py, evaluation.py,
inference.py, the CLIs) only ever calls the fields below, so a new method
edits no shared module. `model_loading.load` turns any checkpoint into a
task, network and params; `corrections` compiles `Task.correct`.

Every callable has one fixed signature, written below as a
`typing.Protocol` (`LossFn`, `CorrectFn`, `PrepareFn`, ...) so a type
checker verifies a task against it. Optional inputs (frozen params, what a
regulariser needs, a reference image) are keyword arguments with defaults:
the shared code always passes them by name, and a method that has no use
for one ignores it; the argument count never changes.

Types used throughout:
- params: the trained pytree (Flax 'params' collection), checkpointed.
- frozen: a pytree the loss reads but never trains (e.g. RECNet's VGG16),
  loaded once per run by `Task.load_frozen` and passed to every train step
  as an argument (not baked into the compiled program); None without one.
- batch: the dict of arrays the train loader yields, its integer images
  converted to float32 in [0, 1] on the device (`pixels.to_float`) before
  `loss_fn` sees them.
- images: NHWC float32 in [0, 1]; a reference is float32 in [0, 1], 1HWC
  (one for the whole batch) or NHWC (one per image: evaluation batches
  images of one size whose protocol gave them different references).

Evaluation: each name in `config.eval.protocols` is one of the method's own
`Task.protocols` or a shared protocol (`expcorr_jax.protocols`: 'full',
'enc_fecnet', 'edges', 'full_experts', 'mixed_regions'). A `Protocol`
prepares a pair for the model (resizing, the reference) and says how the
float output becomes uint8 and how it is scored; the method supplies only
`Task.correct`.

Regularisers: a corrector-independent loss term (ERL's sample-relationship
regulariser) is a `Regulariser`, found by `config.regulariser.name` the same
way as a task (its module's `REGULARISER`). It declares what it needs of a
task's training batch (`TrainingNeeds`); the trainer passes those needs to
the task's loader and loss, which provide them (`LossOutput.output` and
`.target`) without knowing which regulariser asked. A task whose loss
returns none cannot be regularised (the trainer says so).
"""

import dataclasses
import typing
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np

Config: typing.TypeAlias = ml_collections.ConfigDict
Params: typing.TypeAlias = Any
Batch: typing.TypeAlias = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class TrainingNeeds:
  """What a regulariser needs of a task's training batch and loss.

  The trainer passes the needs of `config.regulariser` (none without one)
  to `Task.make_train_loader` and `Task.loss_fn`; a task provides them in
  its `LossOutput` without knowing which regulariser asked.

  Attributes:
    normal_exposure_pair: `LossOutput.output` is the batch corrected
      towards a normal-exposure ground truth and `LossOutput.target` that
      ground truth (ERL compares the two through its frozen BCM). A task
      whose own loss already has such a pair returns it anyway; one that
      must sample or compute extra for it (UEC: the scene's EV 0 frame and
      one more pass) does so only when this is set.
  """
  normal_exposure_pair: bool = False


NO_NEEDS = TrainingNeeds()


class LossFn(typing.Protocol):
  """`Task.loss_fn`: the training loss of a float batch.

  Traced inside the jitted, sharded train step: pure JAX.
  """

  def __call__(self, model: Any, params: Params, batch: Batch,
               config: Config, /, *, frozen: Any = None,
               needs: TrainingNeeds = NO_NEEDS) -> 'LossOutput':
    """Args: the network, its params, the float batch, the run's config;
    `frozen`: `Task.load_frozen(config)` (None if the task has none);
    `needs`: what the run's regulariser needs (see `TrainingNeeds`)."""


class CorrectFn(typing.Protocol):
  """`Task.correct`: corrected NHWC images, float32 in [0, 1]; pure JAX."""

  def __call__(self, model: Any, params: Params, images: jax.Array, /, *,
               reference: jax.Array | None = None) -> jax.Array:
    """`reference` (1HWC or NHWC) is given exactly when the task
    `needs_reference`; the others never receive one."""


class PrepareFn(typing.Protocol):
  """`Protocol.prepare`: an evaluation pair made ready for the model."""

  def __call__(self, pair: Any, /, *,
               reference: np.ndarray | None = None) -> 'PreparedPair':
    """`pair` is an `input_pipeline.EvalPair`; `reference` (HxWx3 float32)
    is given for methods that take one (`Task.needs_reference`) and must
    then come back, prepared as the protocol feeds it, in
    `PreparedPair.reference`."""


class TrainLoaderFn(typing.Protocol):
  """`Task.make_train_loader`: an endless grain loader of batch slices."""

  def __call__(self, config: Config, train_source: Any, /, *,
               needs: TrainingNeeds = NO_NEEDS, global_batch_size: int,
               seed: int, worker_count: int, process_index: int,
               process_count: int) -> Any:
    """`train_source` is the train split's data source; the other keywords
    go to `input_pipeline.make_train_loader` (a task usually takes them as
    `**loader_kwargs` and passes them on)."""


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
    prepare: (pair, reference=None) -> PreparedPair (`PrepareFn`).
    quantise: the model's float output (HxWx3) -> uint8 scored pixels,
      usually `pixels.to_uint8` (rounding); a protocol that truncates says
      so here.
    ssim_color: the variant reported as 'ssim' (`image_quality.
      SSIM_VARIANTS`): 'rgb' (averaged over the channels), 'gray' (of the
      rounded BT.601 luma) or 'rgb_pyiqa' (PyIQA's `ssimc`). Every protocol
      also reports 'ssim_y' (PyIQA's `ssim`).
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
    paper_ssim: which reported SSIM ('ssim' or 'ssim_y') the paper this
      protocol follows put in its SSIM column (in every report).
    region_names: the regions `PreparedPair.regions` holds, in order; PSNR
      and SSIM inside each are reported as `psnr_<region>` /
      `ssim_<region>` (NaN where a pair has no such pixel). Empty: none.
  """
  name: str
  prepare: PrepareFn
  quantise: Callable[[np.ndarray], np.ndarray]
  ssim_color: str = 'rgb'
  lpips: bool = False
  description: str = ''
  extra_metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]] | None = (
      None)
  extra_metric_names: tuple[str, ...] = ()
  target_names: tuple[str, ...] = ()
  region_names: tuple[str, ...] = ()
  paper_ssim: str = 'ssim'


@dataclasses.dataclass(frozen=True)
class InferenceHooks:
  """What `inference.Corrector` needs beyond `Task.correct`.

  Attributes:
    module_type: the network class (`Task.create_model` builds it; a
      `Corrector` checks it is given one).
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
    name: the method's name (`config.model`): the name `tasks.get_task`
      finds it by, checked there.
    create_model: config -> the network (an `nn.Module`). The one way a
      network is built, for training and for every loaded checkpoint
      (`model_loading.load` passes the checkpoint's saved config, or, for
      an official file, the settings read off its weights).
    init_params: (module, rng key) -> fresh trainable params.
    loss_fn: the training loss (`LossFn`).
    make_train_loader: the training loader (`TrainLoaderFn`).
    correct: how the method corrects a batch (`CorrectFn`). Used by
      evaluation and by `inference.Corrector`, compiled by `corrections`.
    needs_reference: whether `correct` takes a reference image (the
      exposure to correct towards); evaluation reads it from
      `config.eval.reference`.
    protocols: the method's own evaluation protocols, by name (shared ones
      live in `expcorr_jax.protocols`).
    validate_config: config -> None, raising ValueError naming a bad value
      and the fix; runs before anything is built or loaded, so it reads no
      params (it may read a checkpoint's saved config). None: nothing to
      check beyond the shared fields.
    load_frozen: config -> frozen pytree for `loss_fn`, loaded once per run
      (and by evaluation when `correction_params` needs it); None: no
      frozen params (`loss_fn` then gets frozen=None).
    correction_params: (params, frozen) -> the params `correct` runs with,
      for methods whose correction also needs frozen params (ERL stage 2
      reconstructs with the frozen stage-1 auto-encoder); None: params.
    inference: hooks for `inference.Corrector`; None: the method's
      checkpoints are not correctors (e.g. ERL's pretext stages).
  """
  name: str
  create_model: Callable[[Config], nn.Module]
  init_params: Callable[[nn.Module, jax.Array], Params]
  loss_fn: LossFn
  make_train_loader: TrainLoaderFn
  correct: CorrectFn
  needs_reference: bool = False
  protocols: Mapping[str, Protocol] = dataclasses.field(default_factory=dict)
  validate_config: Callable[[Config], None] | None = None
  load_frozen: Callable[[Config], Any] | None = None
  correction_params: Callable[[Params, Any], Params] | None = None
  inference: InferenceHooks | None = None


class RegulariserLossFn(typing.Protocol):
  """`Regulariser.loss`: a scalar from the task's output and target."""

  def __call__(self, block: Config, frozen: Any, output: jax.Array,
               target: jax.Array, /) -> jax.Array:
    """`block` is `config.regulariser`; `frozen` its `load_frozen(block)`;
    `output` and `target` the task's `LossOutput.output` and `.target`."""


class RegulariserMetricsFn(typing.Protocol):
  """`Regulariser.metrics`: extra figures to log, never differentiated."""

  def __call__(self, block: Config, frozen: Any, output: jax.Array,
               target: jax.Array, /) -> dict[str, jax.Array]:
    """Arguments as `RegulariserLossFn`; scalars by name."""


@dataclasses.dataclass(frozen=True)
class Regulariser:
  """A loss term for any corrector, switched on by a `config.regulariser`.

  The block holds `name` (the module to find this in), `weight` and the
  regulariser's own fields. The trainer adds weight * loss(...) to the
  task's loss, logged under the regulariser's name; the frozen params never
  enter the train state or the checkpoint, and inference is unchanged.

  Attributes:
    name: its name (`config.regulariser.name`).
    needs: what it needs of the task's batch and loss (`TrainingNeeds`).
    validate_config: the whole config -> None, raising ValueError with the
      fix; reads no params (it may read a checkpoint's saved config).
    load_frozen: the `config.regulariser` block -> frozen params, loaded
      once per run.
    loss: see `RegulariserLossFn`.
    metrics: see `RegulariserMetricsFn`, or None; logged as
      '<name>_<key>'.
  """
  name: str
  needs: TrainingNeeds
  validate_config: Callable[[Config], None]
  load_frozen: Callable[[Config], Any]
  loss: RegulariserLossFn
  metrics: RegulariserMetricsFn | None = None


def module_fields(module_type: type[nn.Module]) -> list[str]:
  """The constructor fields of a Flax module class (not parent / name)."""
  return [f.name for f in dataclasses.fields(module_type)
          if f.init and f.name not in ('parent', 'name')]


def build_module(module_type: type[nn.Module],
                 config: Mapping[str, Any]) -> nn.Module:
  """A network from a config's `model_<field>` entries, e.g. RECNet(nc=...).

  Fields the config lacks keep the class's defaults. A task's
  `create_model` calls this for a network whose settings are all
  `model_<field>` entries (how `model_loading.load` applies overrides).
  """
  fields = module_fields(module_type)
  return module_type(**{f: config[f'model_{f}'] for f in fields
                        if f'model_{f}' in config})
