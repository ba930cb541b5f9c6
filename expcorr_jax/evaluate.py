r"""Scores a checkpoint on a dataset under its method's protocols: a CLI.

  # A training workdir (its latest step; or a step folder) on its own data:
  python -m expcorr_jax.evaluate --config=configs/uec.py \
      --checkpoint=/tmp/uec_local --output_dir=/tmp/uec_local/evaluation
  # The official UEC weights on the MSEC test split:
  python -m expcorr_jax.evaluate --config=configs/uec.py \
      --checkpoint=exposure-errors.pth --config.data.name=msec \
      --config.data.manual_dir=~/MSEC --config.data.eval_split=test \
      --output_dir=/tmp/uec_msec --save_images

The checkpoint is a training workdir, its `checkpoints/` folder, one step's
folder, or an official `.pth`. The network's settings (`model_*`) come from
the checkpoint: a workdir's saved config, or the weights' shapes of a `.pth`
(the rest from --config's defaults). --config supplies the data, the
evaluation reference and the protocols; where it names other model settings
than the checkpoint's, the difference is logged as a warning and the
checkpoint's are used. Evaluation needs nothing that only training needs
(no regulariser is loaded).

Writes into --output_dir, named `eval_<dataset>_<split>`:
  .json  the report training writes (per EV, under, over, all; every
         protocol of the method; identity baseline), plus the checkpoint;
  .csv   one row per image and protocol (name, EV tag, PSNR, SSIM, LPIPS...);
  .txt   the table, also in the log;
  images/<protocol>/<name>.png with --save_images: the scored output.
Runs on several processes like training (same flags), each scoring its share.
"""

import os
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from data_prep import build
from expcorr_jax import checkpointing
from expcorr_jax import distributed
from expcorr_jax import evaluation
from expcorr_jax import input_pipeline
from expcorr_jax import protocols
from expcorr_jax import quiet_logs
from expcorr_jax import tasks
from expcorr_jax import train
from expcorr_jax.tasks import contract

def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The CLI's flags (defined when run, so importing defines none)."""
  config_flags.DEFINE_config_file(
      'config', None, 'The method\'s config file (data, reference, '
      'protocols), e.g. configs/uec.py.', flag_values=flag_values,
      lock_config=True)
  flags.DEFINE_string('checkpoint', None, 'A training workdir, its '
                      'checkpoints/ folder, a step folder, or an official '
                      '.pth.', flag_values=flag_values)
  flags.DEFINE_string('output_dir', None, 'Where the report, CSV and images '
                      'go.', flag_values=flag_values)
  flags.DEFINE_bool('save_images', False, 'Write every scored output as a '
                    'PNG.', flag_values=flag_values)
  flags.DEFINE_bool('progress', True, 'Show a progress bar.',
                    flag_values=flag_values)
  distributed.define_flags(flag_values)


def load_checkpoint(config: ml_collections.ConfigDict, path: str
                    ) -> tuple[contract.Task, Any, Any, dict[str, Any]]:
  """(task, network, params, facts for the report) of a checkpoint.

  Raises:
    FileNotFoundError: nothing at `path`.
    ValueError: the checkpoint holds another method than `config.model`, or
      the method has no official weights to read from a `.pth`.
  """
  task = tasks.get_task(config.model)
  path = os.path.abspath(os.path.expanduser(path))
  if path.lower().endswith('.pth'):
    if task.inference is None or task.inference.load_official is None:
      raise ValueError(f'{config.model!r} has no official weights to read '
                       f'from {path}: give a training workdir.')
    if not os.path.isfile(path):
      raise FileNotFoundError(f'No checkpoint file {path}.')
    params, fields = task.inference.load_official(path)
    saved = {f'model_{name}': value for name, value in fields.items()}
    facts = {'checkpoint': path}
  else:
    params, saved, step = checkpointing.load_params(path)
    if saved.get('model') != config.model:
      raise ValueError(
          f'{path} holds a {saved.get("model")!r} checkpoint, but --config '
          f'is for {config.model!r}: pass that method\'s config.')
    facts = {'checkpoint': path, 'checkpoint_step': step}
  model_config = _with_saved_model_settings(config, saved)
  return task, task.create_model(model_config), params, facts


def _with_saved_model_settings(config: ml_collections.ConfigDict,
                               saved: dict[str, Any]
                               ) -> ml_collections.ConfigDict:
  """`config` with the checkpoint's `model_*` settings, differences logged."""
  config = ml_collections.ConfigDict(config.to_dict())
  different = {key: (config[key], value) for key, value in saved.items()
               if key.startswith('model_') and key in config
               and config[key] != value}
  if different:
    logging.warning(
        'The checkpoint was trained with other model settings than --config '
        'names; using the checkpoint\'s: %s.', ', '.join(
            f'{key}={value!r} (config: {mine!r})'
            for key, (mine, value) in different.items()))
  for key, value in saved.items():
    if key.startswith('model_'):
      config[key] = value
  return config


def evaluate_checkpoint(config: ml_collections.ConfigDict, checkpoint: str,
                        output_dir: str, *, save_images: bool = False,
                        progress: bool = False) -> dict:
  """Scores `checkpoint` as the module docstring says; returns the report."""
  task, model, params, facts = load_checkpoint(config, checkpoint)
  chosen = protocols.resolve(task, config.eval.protocols)
  if task.correction_params is not None:  # E.g. ERL stage 2's frozen stage 1.
    params = task.correction_params(params, task.load_frozen(config))
  output_dir = train.local_workdir(output_dir)
  os.makedirs(output_dir, exist_ok=True)
  train.prepare_dataset(config)
  source = input_pipeline.as_pairs(build.data_source(
      config.data.name, config.data.eval_split, config.data.data_dir),
                                   config.data.name)
  reference = (evaluation.load_reference(config) if task.needs_reference
               else None)
  correct_pair = evaluation.pair_corrector(
      task, model, params, reference,
      save_dir=os.path.join(output_dir, 'images') if save_images else None)
  report, _, rows = evaluation.evaluate_source(
      source, correct_pair, chosen, limit=config.eval.max_images,
      progress=progress)
  stem = os.path.join(output_dir, 'eval_{}_{}'.format(
      config.data.name.replace('/', '-'), config.data.eval_split))
  table = evaluation.format_table(report)
  if jax.process_index() == 0:
    evaluation.write_report(report, f'{stem}.json', model=config.model,
                            dataset=config.data.name,
                            split=config.data.eval_split, **facts)
    evaluation.write_csv(rows, f'{stem}.csv')
    with open(f'{stem}.txt', 'w') as f:
      f.write(table + '\n')
  logging.info('Evaluation of %s on %s/%s, written to %s.{json,csv,txt}:\n%s',
               checkpoint, config.data.name, config.data.eval_split, stem,
               table)
  return report


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  fv = flags.FLAGS
  for name in ('config', 'checkpoint', 'output_dir'):
    if fv[name].value is None:
      raise app.UsageError(f'--{name} is required.')
  quiet_logs.install()
  distributed.initialize_from_flags(fv)
  try:
    evaluate_checkpoint(fv.config, fv.checkpoint, fv.output_dir,
                        save_images=fv.save_images, progress=fv.progress)
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from e


if __name__ == '__main__':
  define_flags()
  app.run(main)
