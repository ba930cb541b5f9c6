r"""Scores a checkpoint on a dataset under its method's protocols: a CLI.

  # A training workdir (its latest step; or a step folder) on its own data:
  python -m expcorr_jax.evaluate --config=configs/uec.py \
      --checkpoint=/tmp/uec_local --output_dir=/tmp/uec_local/evaluation
  # The official UEC weights on the MSEC test split:
  python -m expcorr_jax.evaluate --config=configs/uec.py \
      --checkpoint=exposure-errors.pth --config.data.name=msec \
      --config.data.manual_dir=~/MSEC --config.data.eval_split=test \
      --output_dir=/tmp/uec_msec --save_images

  # Outputs another method computed (a published baseline's), on equal terms:
  python -m expcorr_jax.evaluate --config=configs/recnet.py \
      --outputs_dir=~/lcdpnet_outputs --config.data.name=lcdp \
      --config.data.manual_dir=~/LCDP --config.data.eval_split=test \
      --output_dir=/tmp/lcdpnet_on_lcdp

The checkpoint is a training workdir, its `checkpoints/` folder, one step's
folder, or an official `.pth`, loaded by `model_loading.load` (as every tool
loads one) before the dataset is built. The network comes from the
checkpoint: a workdir's saved config (which must be of --config's method),
or the weights' shapes of a `.pth` (the rest from --config's defaults).
--config supplies the data, the evaluation reference and the protocols;
where it names other model settings than the checkpoint's, the difference
is logged as a warning and the checkpoint's are used. Evaluation needs
nothing that only training needs (no regulariser is loaded).

--outputs_dir scores a folder of images instead of a model: each input of
the split is matched by name to `<outputs_dir>/<protocol>/<name>.<ext>`
(the layout --save_images writes) or else `<outputs_dir>/<name>.<ext>`, and
scored under every protocol as a model's output would be (same targets,
same identity baseline). An output must have the size the protocol scores
at (the stored size for 'full'); a missing or mis-sized output fails the
run, naming it. Exactly one of --checkpoint and --outputs_dir is given.

Writes into --output_dir, named `eval_<dataset>_<split>`:
  .json  the report training writes (per EV, under, over, all; every
         protocol of the method; identity baseline), plus the checkpoint;
  .csv   one row per image and protocol (name, EV tag, PSNR, SSIM, LPIPS...);
  .txt   the table, also in the log;
  images/<protocol>/<name>.png with --save_images: the scored output.
Runs on several processes like training (same flags), each scoring its share.
"""

import os
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from data_prep import cli
from data_prep import image_codec
from data_prep import storage
from data_prep.datasets import manual_layout
from expcorr_jax import distributed
from expcorr_jax import evaluation
from expcorr_jax import input_pipeline
from expcorr_jax import model_loading
from expcorr_jax import pixels
from expcorr_jax import protocols
from expcorr_jax import quiet_logs
from expcorr_jax import reports
from expcorr_jax import tasks
from expcorr_jax import train
from expcorr_jax.tasks import contract

def define_flags(flag_values: flags.FlagValues = flags.FLAGS,
                 argv: Sequence[str] | None = None) -> None:
  """The CLI's flags (defined when run, so importing defines none).

  `argv`: the command line the `--config.<field>` overrides are read from
  (None: sys.argv), for a run in-process (`run`).
  """
  config_flags.DEFINE_config_file(
      'config', None, 'The method\'s config file (data, reference, '
      'protocols), configs/<method>.py.', flag_values=flag_values,
      lock_config=True, sys_argv=None if argv is None else list(argv))
  flags.DEFINE_string('checkpoint', None, 'A training workdir, its '
                      'checkpoints/ folder, a step folder, or an official '
                      '.pth.', flag_values=flag_values)
  flags.DEFINE_string('outputs_dir', None, 'Score this folder of '
                      'precomputed outputs instead of a checkpoint.',
                      flag_values=flag_values)
  flags.DEFINE_string('output_dir', None, 'Where the report, CSV and images '
                      'go.', flag_values=flag_values)
  flags.DEFINE_bool('save_images', False, 'Write every scored output as a '
                    'PNG.', flag_values=flag_values)
  flags.DEFINE_bool('progress', True, 'Show a progress bar.',
                    flag_values=flag_values)
  distributed.define_flags(flag_values)


class PrecomputedOutputs:
  """(pair, protocol) -> `ScoredImages` with an output read from a folder.

  The protocol prepares the pair as for a model (its shown input and
  target); the output is the image file named after the pair (see module).
  """

  def __init__(self, folder: str, reference: np.ndarray | None):
    self._folder = storage.path(folder)
    if not self._folder.is_dir():
      raise FileNotFoundError(f'No folder {self._folder} (--outputs_dir).')
    self._reference = reference
    self._files: dict[str, dict[str, epath.Path]] = {}

  def files(self, protocol: contract.Protocol) -> dict[str, epath.Path]:
    """name -> output file for `protocol` (its subfolder if it has one)."""
    if protocol.name not in self._files:
      own = self._folder / protocol.name
      self._files[protocol.name] = manual_layout.list_images(
          own if own.is_dir() else self._folder)
    return self._files[protocol.name]

  def check_complete(self, names: Sequence[str],
                     chosen: Sequence[contract.Protocol]) -> None:
    """Fails naming every pair without an output, before any scoring."""
    for protocol in chosen:
      missing = [name for name in names if name not in self.files(protocol)]
      if missing:
        raise FileNotFoundError(
            f'{len(missing)} of {len(names)} outputs missing in '
            f'{self._folder} for protocol {protocol.name!r}: '
            f'{manual_layout.describe_list(sorted(missing))}. Name each '
            'output after its input (e.g. a0001_N1.5.png), directly in the '
            'folder or in '
            f'{protocol.name}/.')

  def __call__(self, pair: input_pipeline.EvalPair,
               protocol: contract.Protocol) -> contract.ScoredImages:
    prepared = protocol.prepare(pair, reference=self._reference)
    path = self.files(protocol)[pair.name]
    output = pixels.to_uint8(image_codec.read_image(path))
    if output.shape != prepared.target.shape:
      raise ValueError(
          f'Output {path} is {output.shape[1]}x{output.shape[0]}, but '
          f'protocol {protocol.name!r} scores {pair.name!r} at '
          f'{prepared.target.shape[1]}x{prepared.target.shape[0]} (its '
          'target\'s size). Resize the outputs or choose another protocol.')
    return contract.ScoredImages(prepared.shown_input, output,
                                 prepared.target, prepared.other_targets,
                                 prepared.regions)


def evaluate_checkpoint(config: ml_collections.ConfigDict,
                        checkpoint: str | None, output_dir: str, *,
                        outputs_dir: str | None = None,
                        save_images: bool = False,
                        progress: bool = False) -> dict:
  """Scores `checkpoint`, or the images in `outputs_dir`, as the module
  docstring says; returns the report."""
  if (checkpoint is None) == (outputs_dir is None):
    raise ValueError('Give exactly one of --checkpoint and --outputs_dir.')
  task = tasks.get_task(config.model)
  chosen = protocols.resolve(task, config.eval.protocols)
  # Where the report goes, the checkpoint, the reference and outputs_dir
  # are checked before the dataset is built (and a manual_dir before it is
  # built from): a wrong path, bucket or method fails at once.
  output_dir = storage.path(train.check_locations(config, output_dir,
                                                  '--output_dir'))
  loaded = (None if checkpoint is None else
            model_loading.load(checkpoint, config=config))
  reference = (evaluation.load_reference(config) if task.needs_reference
               else None)
  outputs = (None if outputs_dir is None else
             PrecomputedOutputs(outputs_dir, reference))  # Checks the folder.
  train.prepare_dataset(config)
  source = train.eval_pairs(config)
  if outputs is not None:
    correct_pair = outputs
    count = input_pipeline.num_eval_pairs(source, config.eval.max_images)
    correct_pair.check_complete(
        [input_pipeline.eval_pair_label(source, i)[0] for i in range(count)],
        chosen)
    facts = {'outputs_dir': storage.text(outputs_dir)}
    described = facts['outputs_dir']
  else:
    correct_pair = evaluation.pair_corrector(
        loaded.task, loaded.model, loaded.correction_params(), reference,
        save_dir=output_dir / 'images' if save_images else None)
    facts = loaded.facts
    described = checkpoint
  report, _, rows = evaluation.evaluate_source(
      source, correct_pair, chosen, limit=config.eval.max_images,
      progress=progress)
  stem = os.fspath(output_dir / 'eval_{}_{}'.format(
      config.data.name.replace('/', '-'), config.data.eval_split))
  table = reports.format_table(report)
  if jax.process_index() == 0:
    dataset_facts = train.dataset_facts(config)
    reports.write_report(report, f'{stem}.json', model=config.model,
                         dataset=config.data.name,
                         split=config.data.eval_split, **facts,
                         **dataset_facts)
    if 'dataset_omissions' in dataset_facts:
      table = (f'NOTE: the {config.data.eval_split} split was built without '
               f'{len(dataset_facts["dataset_omissions"])} example(s) (see the '
               'JSON\'s dataset_omissions); not comparable with results on '
               'the full split.\n' + table)
    reports.write_csv(rows, f'{stem}.csv')
    storage.write_text(f'{stem}.txt', table + '\n')
  logging.info('Evaluation of %s on %s/%s, written to %s.{json,csv,txt}:\n%s',
               described, config.data.name, config.data.eval_split, stem,
               table)
  return report


def main(argv: Sequence[str],
         flag_values: flags.FlagValues = flags.FLAGS) -> int:
  """Runs the CLI on parsed flags; returns the exit code (0)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  fv = flag_values
  for name in ('config', 'output_dir'):
    if fv[name].value is None:
      raise app.UsageError(f'--{name} is required.')
  if (fv.checkpoint is None) == (fv.outputs_dir is None):
    raise app.UsageError('Give exactly one of --checkpoint (a model to run) '
                         'and --outputs_dir (its outputs, already computed).')
  quiet_logs.install()
  distributed.initialize_from_flags(fv)
  try:
    evaluate_checkpoint(fv.config, fv.checkpoint, fv.output_dir,
                        outputs_dir=fv.outputs_dir,
                        save_images=fv.save_images, progress=fv.progress)
  except (FileNotFoundError, ValueError, storage.StorageError,
          image_codec.ImageDecodeError) as e:
    raise app.UsageError(str(e)) from e
  return 0


def run(args: Sequence[str]) -> int:
  """Parses CLI `args` (no program name) into fresh flags and runs `main`."""
  return cli.run('evaluate',
                 lambda fv: define_flags(fv, argv=['evaluate', *args]), main,
                 args)


if __name__ == '__main__':
  define_flags()
  app.run(main)
