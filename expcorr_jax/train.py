"""The training loop: data-parallel over a device mesh, resumable, preemptible.

One jitted train step with explicit shardings: the batch is split over the
mesh's 'data' axis, parameters and optimiser state are replicated; XLA inserts
the gradient all-reduce. Each process feeds its own slice of the global batch
(`jax.make_array_from_process_local_data`), so the same code runs on one CPU,
one GPU, or a multi-host TPU slice.

Robustness:
- Rerunning with the same workdir resumes from the latest checkpoint (train
  state, data-iterator state, config), ending with exactly the params of an
  uninterrupted run.
- SIGTERM (preemption) saves a checkpoint at the current step, then returns;
  with several processes, at one step all of them agree on, whichever
  process got the signal (`distributed.Preemption`).
- A non-finite loss or gradient never reaches the parameters (the step
  keeps the old state) and stops the run with an error naming the step; no
  checkpoint is written after it, so the last good one stays intact.
- A lost process (a dead host) stops the others within the runtime's
  heartbeat timeout, with a message naming it and the last good checkpoint
  (`distributed.exit_for_lost_process`).
- One job per workdir: a second job training in the same workdir fails at
  start (`workdir_lease`).
- Evaluation is split over the processes (`evaluation.evaluate_source`): the
  report is the one a single process would write.
"""

import os
import time
from typing import Any, Callable, Sequence

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from data_prep import storage
from expcorr_jax import base_config
from expcorr_jax import checkpointing
from expcorr_jax import distributed
from expcorr_jax import evaluation
from expcorr_jax import input_pipeline
from expcorr_jax import pixels
from expcorr_jax import protocols
from expcorr_jax import reports
from expcorr_jax import summary_writer
from expcorr_jax import tasks
from expcorr_jax import workdir_lease
from expcorr_jax.tasks import contract

P = jax.sharding.PartitionSpec


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def regulariser_of(config: ml_collections.ConfigDict
                   ) -> contract.Regulariser | None:
  """The regulariser `config.regulariser` switches on, if any."""
  block = config.regulariser
  return None if block is None else tasks.get_regulariser(block.name)


def training_needs(config: ml_collections.ConfigDict
                   ) -> contract.TrainingNeeds:
  """What the run's regulariser needs of the task (nothing without one)."""
  regulariser = regulariser_of(config)
  return contract.NO_NEEDS if regulariser is None else regulariser.needs


def missing_keys(config: ml_collections.ConfigDict,
                 keys: Sequence[str] | None = None) -> list[str]:
  """The dotted `keys` (by default every key of the base config, which the
  shared trainer and evaluation read) that `config` lacks."""
  missing = []
  for key in base_config.required_keys() if keys is None else keys:
    node = config
    for part in key.split('.'):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        missing.append(key)
        break
      node = node[part]
  return missing


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early, naming the bad value and the fix."""
  missing = missing_keys(config)
  if missing:
    raise ValueError(
        f'The config lacks {", ".join(missing)}, which the trainer reads. '
        'Start the config file from expcorr_jax.base_config.get_config(), '
        'which has each with its usual value (regulariser = None and '
        'optimizer.decay_steps = () switch those off).')
  positive = {
      'batch_size': config.batch_size,
      'num_train_steps': config.num_train_steps,
      'log_every_steps': config.log_every_steps,
      'eval_every_steps': config.eval_every_steps,
      'checkpoint_every_steps': config.checkpoint_every_steps,
      'keep_checkpoints': config.keep_checkpoints,
  }
  for name, value in positive.items():
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f'config.{name} must be a positive integer, got '
                       f'{value!r}.')
  if (not isinstance(config.workdir_lease_stale_s, (int, float)) or
      not config.workdir_lease_stale_s > 0):
    raise ValueError('config.workdir_lease_stale_s must be a positive number '
                     f'of seconds, got {config.workdir_lease_stale_s!r}.')
  if not config.optimizer.learning_rate > 0:
    raise ValueError('config.optimizer.learning_rate must be positive.')
  if config.data.crop_size is not None and config.data.crop_size < 16:
    raise ValueError('config.data.crop_size must be at least 16 (or None).')
  if config.batch_size % jax.device_count():
    raise ValueError(
        f'config.batch_size={config.batch_size} must be divisible by the '
        f'{jax.device_count()} devices so each gets an equal share: pass '
        f'--config.batch_size={jax.device_count()} (or a multiple).')
  task = tasks.get_task(config.model)
  protocols.resolve(task, config.eval.protocols)
  if task.validate_config is not None:
    task.validate_config(config)
  regulariser = regulariser_of(config)
  if regulariser is not None:
    regulariser.validate_config(config)


def make_mesh(devices=None) -> jax.sharding.Mesh:
  devices = np.asarray(jax.devices() if devices is None else devices)
  return jax.sharding.Mesh(devices, ('data',))


def make_optimizer(config: ml_collections.ConfigDict):
  """Adam; the learning rate is multiplied by `decay_factor` at each step of
  `optimizer.decay_steps` (RECNet's MultiStep schedule), if any."""
  learning_rate = config.optimizer.learning_rate
  decay_steps = tuple(config.optimizer.decay_steps)
  if decay_steps:
    learning_rate = optax.piecewise_constant_schedule(
        learning_rate,
        {int(step): config.optimizer.decay_factor for step in decay_steps})
  return optax.adam(learning_rate, b1=config.optimizer.b1,
                    b2=config.optimizer.b2)


def load_frozen(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The frozen params of a run: {'task': ..., 'regulariser': ...}.

  Each is None when the task (`Task.load_frozen`) or the regulariser has
  none.
  """
  task = tasks.get_task(config.model)
  regulariser = regulariser_of(config)
  return {
      'task': None if task.load_frozen is None else task.load_frozen(config),
      'regulariser': (None if regulariser is None else
                      regulariser.load_frozen(config.regulariser)),
  }


def loss_and_metrics(model, params, batch: dict[str, jax.Array], config,
                     frozen: dict[str, Any], log_step: Any = True
                     ) -> tuple[jax.Array, dict]:
  """The task's loss plus the regulariser's, with the metrics to log.

  The regulariser's own diagnostics (`Regulariser.metrics`, extra passes
  that serve only the log) are computed when `log_step` (a traced bool:
  the trainer logs after this step) holds, and are NaN otherwise, which
  `_log_metrics` leaves out of its means.
  """
  task = tasks.get_task(config.model)
  result = task.loss_fn(model, params, batch, config, frozen=frozen['task'],
                        needs=training_needs(config))
  loss, metrics = result.loss, dict(result.metrics)
  regulariser = regulariser_of(config)
  if regulariser is not None:
    if result.output is None or result.target is None:
      raise ValueError(
          f'The {regulariser.name!r} regulariser needs {regulariser.needs} '
          f'of the task, but the {task.name!r} loss returns no '
          'LossOutput.output / .target: drop config.regulariser.')
    value = regulariser.loss(config.regulariser, frozen['regulariser'],
                             result.output, result.target)
    loss = loss + config.regulariser.weight * value
    metrics[regulariser.name] = value
    if regulariser.metrics is not None:
      output = jax.lax.stop_gradient(result.output)
      target = jax.lax.stop_gradient(result.target)

      def diagnostics():
        return regulariser.metrics(config.regulariser, frozen['regulariser'],
                                   output, target)

      skipped = jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype),
                             jax.eval_shape(diagnostics))
      extra = jax.lax.cond(log_step, diagnostics, lambda: skipped)
      metrics.update({f'{regulariser.name}_{key}': value
                      for key, value in extra.items()})
  metrics['loss'] = loss
  return loss, metrics


def make_train_step(model, config, optimizer, mesh: jax.sharding.Mesh,
                    frozen: Any = None) -> Callable:
  """The jitted step (state, batch) -> (state, metrics) over `mesh`.

  `frozen` (`load_frozen(config)`; None means none) holds parameters the
  loss uses but never trains (VGG16 for RECNet's contrastive term, a
  pretrained ERL module); it is placed on the devices once, replicated, and
  passed to every step as an argument rather than baked into the compiled
  program as a constant.
  """
  if frozen is None:
    frozen = {'task': None, 'regulariser': None}
  replicated = jax.sharding.NamedSharding(mesh, P())
  data = jax.sharding.NamedSharding(mesh, P('data'))

  def step(state: TrainState, batch, frozen):
    # Stored pixels (uint8/uint16) become float32 in [0, 1] on the device;
    # other arrays (EVs, labels) stay as they are.
    batch = {k: pixels.to_float(v) if pixels.is_integer_pixels(v.dtype) else v
             for k, v in batch.items()}
    # The trainer logs after this step (see the training loop).
    next_step = state.step + 1
    log_step = ((next_step % config.log_every_steps == 0) |
                (next_step == config.num_train_steps))
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: loss_and_metrics(model, p, batch, config, frozen, log_step),
        has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A finite loss can still have non-finite gradients (e.g. a norm's
    # derivative at zero), which Adam would spread to every parameter.
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = TrainState(step=state.step + 1, params=params,
                           opt_state=opt_state)
    # A non-finite loss leaves the state untouched (the host then stops).
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                             new_state, state)
    metrics = dict(metrics, finite=finite, grad_norm=grad_norm)
    return new_state, metrics

  jitted = jax.jit(step, in_shardings=(replicated, data, replicated),
                   out_shardings=(replicated, replicated), donate_argnums=0)
  frozen = jax.device_put(frozen, replicated)
  return lambda state, batch: jitted(state, batch, frozen)


def make_global_batch(local_batch: dict[str, np.ndarray],
                      mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Numeric arrays of this process's batch slice -> global sharded arrays."""
  data = jax.sharding.NamedSharding(mesh, P('data'))
  return {k: jax.make_array_from_process_local_data(data, v)
          for k, v in local_batch.items() if v.dtype.kind in 'uif'}


def init_state(model, config, optimizer, mesh) -> TrainState:
  task = tasks.get_task(config.model)
  replicated = jax.sharding.NamedSharding(mesh, P())

  def init(rng):
    params = task.init_params(model, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))

  return jax.jit(init, out_shardings=replicated)(
      jax.random.key(config.seed))


def _check_finite(pending: list[tuple[int, dict]]) -> None:
  for step, metrics in pending:
    if not bool(metrics['finite']):
      raise FloatingPointError(
          f'Non-finite loss or gradient at step {step}: training stopped and '
          'the update '
          'was not applied; the last checkpoint (before this step) is intact. '
          'Lower the learning rate or check the data.')


def _log_metrics(writer, step: int, pending: list[tuple[int, dict]],
                 num_steps: int, seconds: float, batch_size: int) -> None:
  fetched = jax.device_get([m for _, m in pending])
  # NaN marks a diagnostic not computed at that step (`loss_and_metrics`);
  # the loss and gradients were checked finite before this.
  means = {}
  for key in fetched[0]:
    values = np.asarray([m[key] for m in fetched], np.float64)
    if key != 'finite' and not np.isnan(values).all():
      means[key] = float(np.nanmean(values))
  steps_per_s = len(pending) / max(seconds, 1e-9)
  means['steps_per_second'] = steps_per_s
  means['images_per_second'] = steps_per_s * batch_size
  writer.write_scalars(step, {f'train/{k}': v for k, v in means.items()})
  eta = (num_steps - step) / max(steps_per_s, 1e-9)
  logging.info('step %d/%d  %s  %.2f steps/s  eta %.0fs', step, num_steps,
               '  '.join(f'{k}={v:.5g}' for k, v in means.items()
                         if 'second' not in k), steps_per_s, eta)


def local_copy(array: jax.Array) -> jax.Array:
  """This process's copy of a replicated array, on its first local device."""
  return array.addressable_data(0)


def run_evaluation(task, model, params, config, workdir: str, step: int,
                   eval_pairs_source, reference, writer,
                   frozen: dict[str, Any]) -> dict:
  """Evaluates, writes JSON, a log table, summaries and an image grid."""
  start = time.time()
  # Each process scores its own pairs on one of its devices: a local copy of
  # the replicated params, so no collective runs per image.
  params = jax.tree.map(local_copy, params)
  if task.correction_params is not None:
    params = task.correction_params(params, frozen['task'])
  report, grid_rows, _ = evaluation.evaluate_source(
      eval_pairs_source,
      evaluation.pair_corrector(task, model, params, reference),
      protocols.resolve(task, config.eval.protocols),
      limit=config.eval.max_images,
      num_grid_images=config.eval.num_grid_images, grid_reference=reference)
  path = storage.path(workdir) / f'eval_step_{step}.json'
  if jax.process_index() == 0:
    reports.write_report(report, path, step=step, model=config.model,
                         dataset=config.data.name,
                         split=config.data.eval_split,
                         **dataset_facts(config))
  logging.info('Evaluation at step %d (%.1fs), written to %s:\n%s', step,
               time.time() - start, path, reports.format_table(report))
  scalars = {}
  for protocol, result in report.items():
    for name in ('psnr', 'ssim', 'identity_psnr', 'identity_ssim'):
      scalars[f'eval_{protocol}/{name}'] = result['all'][name]
  writer.write_scalars(step, scalars)
  if grid_rows:
    grid = reports.image_grid(grid_rows)
    writer.write_images(step, {'eval/input_output_target_reference': grid})
    if jax.process_index() == 0:
      from data_prep import image_codec  # pylint: disable=g-import-not-at-top
      image_codec.write_png(
          storage.path(workdir) / f'eval_grid_step_{step}.png', grid)
  writer.flush()
  return report


def check_locations(config: ml_collections.ConfigDict, workdir: str,
                    what: str = '--workdir') -> str:
  """The workdir (local or gs://), after proving it writable, and a remote
  data_dir that still needs its dataset built: a missing bucket, missing
  access or an unreachable endpoint fails here, before any data is built or
  anything compiles. (A prepared dataset in a read-only bucket is fine.)

  Raises:
    storage.StorageError: one line naming the location and the cause.
  """
  from data_prep import build  # pylint: disable=g-import-not-at-top
  checked = os.fspath(storage.check_writable(workdir, what))
  data = config.data
  if storage.is_remote(data.data_dir):
    try:
      prepared = build.get_builder(data.name, data.data_dir).is_prepared()
    except Exception:  # pylint: disable=broad-except  # Named just below.
      prepared = False
    if not prepared:
      storage.check_writable(data.data_dir, '--config.data.data_dir')
  return checked


def prepare_dataset(config: ml_collections.ConfigDict) -> None:
  """Prepares the dataset once, also with many processes.

  Process 0 prepares it first while the others wait at a barrier; then every
  other process checks for it, which reads the copy process 0 made where
  `data_dir` is shared, and builds a host-local copy where it is not (the
  builder's file lock keeps the processes of one host from building twice).
  """
  from data_prep import build  # pylint: disable=g-import-not-at-top
  data = config.data
  if jax.process_index() == 0:
    build.ensure_prepared(data.name, data.data_dir, data.manual_dir)
  distributed.barrier('dataset prepared')
  if jax.process_index() != 0:
    build.ensure_prepared(data.name, data.data_dir, data.manual_dir)


def eval_pairs(config: ml_collections.ConfigDict):
  """The evaluation split (`config.data.eval_split`) read as pairs.

  A multi-exposure dataset gives one pair per scene and EV, its target the
  scene's frame at `config.data.target_ev` (`input_pipeline.as_pairs`).
  """
  from data_prep import build  # pylint: disable=g-import-not-at-top
  return input_pipeline.as_pairs(
      build.data_source(config.data.name, config.data.eval_split,
                        config.data.data_dir),
      config.data.name, config.data.target_ev)


def dataset_facts(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What reports say of the evaluated split: 'dataset_omissions' if its
  build left out examples (`data_prep.build.omissions`, logged as a
  warning: figures on a smaller test set are not comparable with published
  ones), and 'split_source' where the builder records how its splits were
  decided (e.g. the radiometry release's own train list)."""
  from data_prep import build  # pylint: disable=g-import-not-at-top
  omitted = build.omissions(config.data.name, config.data.eval_split,
                            config.data.data_dir)
  source = build.split_source(config.data.name, config.data.data_dir)
  facts = {}
  if omitted:
    logging.warning(
        'The %s split of %s was built without %d example(s) (recorded in '
        'the report as dataset_omissions): the figures are not comparable '
        'with results on the full split.', config.data.eval_split,
        config.data.name, len(omitted))
    facts['dataset_omissions'] = omitted
  if source is not None:
    facts['split_source'] = source
  return facts


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict | None:
  """Trains `config.model` in `workdir`; returns the final eval report.

  Returns None when preempted (SIGTERM) before the end.

  Raises:
    workdir_lease.WorkdirInUseError: another live job trains in `workdir`.
  """
  validate_config(config)
  workdir = check_locations(config, workdir)
  with workdir_lease.TrainingLease(
      workdir, config.workdir_lease_stale_s) as lease:
    return _train_and_evaluate(config, workdir, lease)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        lease: workdir_lease.TrainingLease) -> dict | None:
  """`train_and_evaluate` once the workdir's lease is held."""
  from data_prep import build  # pylint: disable=g-import-not-at-top
  task = tasks.get_task(config.model)
  # Frozen parts (VGG16, an ERL stage) load once, and the evaluation
  # reference is read, before the dataset is built: a missing or broken
  # file fails at once.
  frozen = load_frozen(config)
  reference = (evaluation.load_reference(config) if task.needs_reference
               else None)
  prepare_dataset(config)
  train_source = build.data_source(config.data.name, config.data.train_split,
                                   config.data.data_dir)
  eval_source = eval_pairs(config)

  mesh = make_mesh()
  model = task.create_model(config)
  optimizer = make_optimizer(config)
  state = init_state(model, config, optimizer, mesh)
  train_step = make_train_step(model, config, optimizer, mesh, frozen=frozen)

  loader = task.make_train_loader(
      config, train_source, needs=training_needs(config),
      global_batch_size=config.batch_size,
      seed=config.seed, worker_count=config.data.worker_count,
      process_index=jax.process_index(), process_count=jax.process_count())
  iterator = iter(loader)

  manager = checkpointing.create_manager(workdir, keep=config.keep_checkpoints)
  replicated = jax.sharding.NamedSharding(mesh, P())
  restored_step, restored = checkpointing.restore_latest(
      manager, checkpointing.abstract_like(state, replicated), iterator)
  if restored is not None:
    state = restored
  step = int(local_copy(state.step))
  writer = summary_writer.SummaryWriter(workdir)
  if restored_step is None:
    writer.write_text(0, {'config': f'```\n{config}\n```'})
    logging.info('Training %s from scratch for %d steps in %s.', config.model,
                 config.num_train_steps, workdir)
  else:
    logging.info('Resuming at step %d of %d.', step, config.num_train_steps)

  pending = []
  last_log = time.time()
  try:
    with distributed.Preemption() as preemption:
      while step < config.num_train_steps:
        state, metrics = train_step(state, make_global_batch(next(iterator),
                                                             mesh))
        step += 1
        pending.append((step, metrics))
        log_now = (step % config.log_every_steps == 0 or
                   step == config.num_train_steps)
        preempted = preemption.reached(step)
        save_now = (step % config.checkpoint_every_steps == 0 or
                    step == config.num_train_steps or preempted)
        if log_now or save_now:
          _check_finite(pending)
        if log_now:
          _log_metrics(writer, step, pending, config.num_train_steps,
                       time.time() - last_log, config.batch_size)
          pending, last_log = [], time.time()
        if save_now:
          lease.check()  # Another job holds the workdir now: never save.
          checkpointing.save(manager, step, state, iterator, config)
        if preempted:
          logging.warning('Preempted at step %d; rerun to resume.', step)
          writer.close()
          manager.close()
          return None
        if (step % config.eval_every_steps == 0 and
            step < config.num_train_steps):
          run_evaluation(task, model, state.params, config, workdir, step,
                         eval_source, reference, writer, frozen)
          last_log = time.time()  # Throughput counts training time only.
    report = run_evaluation(task, model, state.params, config, workdir, step,
                            eval_source, reference, writer, frozen)
  except Exception as e:  # pylint: disable=broad-except
    if not distributed.is_peer_failure(e):
      raise
    distributed.exit_for_lost_process(
        e, f'The last complete checkpoint is step {manager.latest_step()} '
        f'in {workdir}; rerun every process to resume from it.')
  writer.close()
  manager.close()
  return report
