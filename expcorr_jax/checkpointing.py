"""Checkpoints: train state, data-iterator state and config saved together.

Orbax writes each step to a temporary directory and renames it when complete,
so a crash mid-save never corrupts the latest good checkpoint; restoring picks
the latest complete step. The grain iterator state (one file per process) is
saved beside the train state so a resumed run sees exactly the batches an
uninterrupted run would. Restored into another number of processes, the train
state is resharded and the data order restarts from its seed (logged).
"""

import os
import re
from typing import Any

from absl import logging
from etils import epath
import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from data_prep import storage

CHECKPOINT_SUBDIR = 'checkpoints'


class CheckpointSaveError(OSError):
  """A checkpoint could not be written (disk full, no permission...)."""


def check_finite(params: Any, source: str) -> None:
  """Raises ValueError naming `source` and the first NaN / infinite leaf.

  Args:
    params: a pytree of arrays (numpy or JAX).
    source: what holds them, for the message (a file or step folder).
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if not hasattr(leaf, 'dtype') or not np.issubdtype(leaf.dtype,
                                                       np.floating):
      continue
    if not bool(np.all(np.isfinite(np.asarray(jax.device_get(leaf))))):
      raise ValueError(
          f'{source} holds NaN or infinite weights at '
          f'{jax.tree_util.keystr(path)}: the checkpoint is corrupt or its '
          'training diverged, and every output would be garbage. Use an '
          'earlier step folder (for training: move this step folder away '
          'and rerun to resume from the one before), or retrain.')


def create_manager(workdir: str | os.PathLike[str], *,
                   keep: int) -> ocp.CheckpointManager:
  """The manager of `<workdir>/checkpoints` (local or in a bucket)."""
  directory = storage.path(workdir) / CHECKPOINT_SUBDIR
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory, options=options,
                               item_names=('state', 'data', 'config'))


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iterator: Any, config: ml_collections.ConfigDict) -> None:
  """Saves the train state, data-iterator state and config at `step`.

  Raises:
    CheckpointSaveError: the write failed (e.g. disk full, read-only
      directory). The message names the directory and the cause; the
      steps saved before stay complete and restorable (orbax writes into a
      temporary folder and renames it only once the whole step is written).
  """
  try:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(config.to_dict())), force=True)
    manager.wait_until_finished()
  except (OSError, ValueError) as e:  # tensorstore: ValueError for I/O.
    try:  # What the storage holds now, not the manager's memory of it.
      manager.reload()
      last = manager.latest_step()
    except Exception:  # pylint: disable=broad-except
      last = None  # The storage may be unreachable now.
    cause = getattr(e, 'strerror', None) or str(e).splitlines()[0]
    message = (
        f'Could not save checkpoint {step} in {manager.directory}: {cause}. '
        + (f'The last good checkpoint, step {last}, is intact; a rerun of '
           'the same command resumes from it' if last is not None else
           'No earlier complete checkpoint was found')
        + ' once the disk has room / the location is writable and '
        'reachable.')
    errno = getattr(e, 'errno', None)
    raise (CheckpointSaveError(errno, message) if errno else
           CheckpointSaveError(message)) from e
  logging.info('Saved checkpoint at step %d in %s.', step, manager.directory)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   data_iterator: Any) -> tuple[int | None, Any]:
  """Restores the latest checkpoint into `data_iterator`; returns step, state.

  Returns (None, None) when the workdir holds no checkpoint yet.
  """
  step = manager.latest_step()
  if step is None:
    return None, None
  items = {'state': ocp.args.StandardRestore(abstract_state)}
  saved_processes = _saved_process_count(manager, step)
  if saved_processes == jax.process_count():
    items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
  else:
    logging.warning(
        'Checkpoint %d was written by %s processes, this run has %d: its '
        'train state is restored, but the data iterators cannot carry over, '
        'so the data order restarts from the seed.', step,
        saved_processes or 'an unknown number of', jax.process_count())
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(
        f'Checkpoint {step} in {manager.directory} does not fit this config '
        f'({type(e).__name__}: {e}). Use a fresh --workdir, or the config '
        'the checkpoint was trained with (saved beside it as config).') from e
  check_finite(restored.state.params,
               os.fspath(epath.Path(manager.directory) / str(step)))
  logging.info('Restored checkpoint at step %d from %s.', step,
               manager.directory)
  return step, restored.state


_ITERATOR_FILE = re.compile(r'process_(\d+)-of-(\d+)\.json')


def _saved_process_count(manager: ocp.CheckpointManager,
                         step: int) -> int | None:
  """How many processes wrote a step's data-iterator states (grain's files)."""
  directory = epath.Path(manager.directory) / str(step) / 'data'
  if not directory.is_dir():
    return None
  counts = {int(match.group(2)) for match in
            (_ITERATOR_FILE.fullmatch(child.name)
             for child in directory.iterdir()) if match}
  return counts.pop() if len(counts) == 1 else None


def abstract_like(state: Any, sharding: jax.sharding.Sharding) -> Any:
  """ShapeDtypeStructs with the target sharding, for restoring in place."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      state)


def _open_read_only(path: str) -> tuple[ocp.CheckpointManager, int, str]:
  """(read-only manager, step, step folder) of a checkpoint path.

  `path` is a training workdir, its `checkpoints/` folder, or one step's
  folder (`.../checkpoints/<step>`); a workdir or folder means its latest
  step.

  Raises:
    FileNotFoundError: no checkpoint there.
  """
  path = storage.path(path)
  step = None
  if path.name.isdigit() and (path / 'state').is_dir():
    step = int(path.name)
    directory = path.parent
  elif (path / CHECKPOINT_SUBDIR).is_dir():
    directory = path / CHECKPOINT_SUBDIR
  else:
    directory = path
  if not directory.is_dir():
    raise FileNotFoundError(
        f'No checkpoint at {path}: give a training workdir, its checkpoints/ '
        'folder or a step folder.')
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'config': ocp.JsonCheckpointHandler()})
  step = manager.latest_step() if step is None else step
  if step is None:
    manager.close()
    raise FileNotFoundError(f'No complete checkpoint in {directory}: train '
                            'first, or give the path of a finished one.')
  return manager, step, os.fspath(directory / str(step))


def read_config(path: str) -> tuple[dict[str, Any], int, str]:
  """The saved config, step and step folder of a checkpoint; no params read.

  For checks before anything is loaded (which method, which settings).
  `path` as in `load_params`.

  Raises:
    FileNotFoundError: no checkpoint there.
  """
  manager, step, folder = _open_read_only(path)
  restored = manager.restore(step, args=ocp.args.Composite(
      config=ocp.args.JsonRestore()))
  manager.close()
  return dict(restored.config), step, folder


def load_params(path: str) -> tuple[Any, dict[str, Any], int]:
  """Params, config and step of a training checkpoint, for inference.

  Args:
    path: a training workdir, its `checkpoints/` folder, or one step's folder
      (`.../checkpoints/<step>`); a workdir or folder means its latest step.

  Returns:
    (params as numpy arrays, the training config as a dict, the step).

  Raises:
    FileNotFoundError: no checkpoint there.
    ValueError: some params are NaN or infinite.
  """
  manager, step, folder = _open_read_only(path)
  # Onto this process's first device, whatever devices and processes wrote
  # it (a checkpoint of a 2-host run loads on a laptop).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda leaf: (jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                         sharding=device)
                    if hasattr(leaf, 'shape') and hasattr(leaf, 'dtype')
                    else leaf),
      manager.item_metadata(step)['state'])
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract),
      config=ocp.args.JsonRestore()))
  manager.close()
  params = jax.tree.map(np.asarray, restored.state['params'])
  check_finite(params, folder)
  return params, dict(restored.config), step
