r"""Every command of README.md's "Reproducing the papers", run as written.

The commands are read from README.md when the tests are collected
(tests/readme_recipes.py: the backticked `python -m ...` commands of each
table's build, train and evaluate columns and the lines of the section's
```bash blocks), so a README edit changes what runs here. They run in the
README's order, each as `sys.executable -m ...` in a subprocess from the
repository root, with the README's flags in the README's order, after these
substitutions only:

  - HOME is a temporary folder holding stand-ins of the downloads in their
    official layouts (tests/standin_datasets.py: ~/MSEC, ~/radiometry,
    ~/SICE, ~/LCDP, ~/LOL). A word starting with `~` is expanded as a shell
    expands it; `~` inside `--flag=~/...`, which a shell leaves alone, reaches
    the tools as written: they expand it themselves (that is tested too);
  - `/tmp/<name>` is `<name>` in a temporary folder of this module;
  - `exposure-errors.pth` and `radiometry.pth` are the official UEC weights
    of ../shared/fixtures/uec/;
  - a placeholder file name (capitals: `~/radiometry/neg3/NAME`) is the
    first file of that folder;
  - `VAR=value` before `python` is set in the command's environment; a
    single `CUDA_VISIBLE_DEVICES` (one GPU) also gives the CPU one device
    (the tests simulate 8, tests/conftest.py);
  - CPU-sized settings are appended at the end: to training two steps, small
    crops (or a 32x32 resize), batch 8 (one per simulated device), a small
    network (UEC's encoder at height 32; one RECNet block without the VGG
    term; ERL's t_e on 4x4 tokens) and two evaluated images; to `evaluate`,
    two images.

TFDS's default data_dir is a private folder (TFDS_DATA_DIR; the commands'
own `--data_dir`s are under the temporary HOME), and the commands share one
JAX compilation cache. Each command must exit with 0 and leave what it
promises: a prepared dataset, a workdir with its last checkpoint and
evaluation report, or the evaluation's JSON, CSV and table.

The `correct` and `evaluate` CLIs also run through their entry points here on
what the recipes trained and on the official weights, and misuse of either
exits non-zero naming the problem.
"""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

from PIL import Image
import pytest

import conftest  # tests/ is on sys.path.
import readme_recipes
import standin_datasets

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES_DIR = REPO_ROOT.parent / 'shared' / 'fixtures'
RECIPES = readme_recipes.read((REPO_ROOT / 'README.md').read_text())
TRAIN_STEPS = 2
EVAL_IMAGES = 2
TIMEOUT_S = 400
OFFICIAL_WEIGHTS = ('exposure-errors.pth', 'radiometry.pth')

# Commands that fail because of a bug in the project's code: a substring of
# the README command -> the bug. Each such case is an expected failure
# (strict: it must fail until the bug is fixed).
KNOWN_BUGS: dict[str, str] = {}

# One worker runs them all, in order (setup.cfg: --dist loadfile; the
# sandbox fixture checks it).


class Sandbox:
  """The stand-in HOME, the folder standing for /tmp, and the environment
  every command runs in."""

  def __init__(self, root: pathlib.Path):
    self.root = root
    self.home = root / 'home'
    self.tmp = root / 'tmp'
    self.tfds = root / 'tfds'
    self.home.mkdir()
    self.tmp.mkdir()
    standin_datasets.make_all(self.home)
    self.env = dict(
        os.environ, HOME=str(self.home), TFDS_DATA_DIR=str(self.tfds),
        JAX_PLATFORMS='cpu',
        JAX_COMPILATION_CACHE_DIR=str(root / 'compilation_cache'),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
    self.passed: set[str] = set()
    self.seconds: dict[str, float] = {}

  def run(self, argv: list[str], env: dict[str, str] | None = None,
          label: str = '') -> subprocess.CompletedProcess:
    start = time.time()
    result = subprocess.run(argv, cwd=REPO_ROOT, env=env or self.env,
                            capture_output=True, text=True,
                            timeout=TIMEOUT_S, check=False)
    self.seconds[label or shlex.join(argv[2:4])] = time.time() - start
    return result

  def expand(self, text: str) -> str:
    """`~` at the start of a word, as a shell expands it."""
    return str(self.home) + text[1:] if text.startswith('~/') else text

  def local(self, value: str) -> pathlib.Path:
    """A path as the tools see it (their own `~` expansion)."""
    return pathlib.Path(self.expand(value))


@pytest.fixture(scope='module')
def sandbox(tmp_path_factory):
  for name in OFFICIAL_WEIGHTS:
    if not (FIXTURES_DIR / 'uec' / name).is_file():
      message = f'Official weights {FIXTURES_DIR / "uec" / name} missing.'
      if os.environ.get('CI', '').lower() == 'true':
        pytest.fail(message)
      pytest.skip(message)
  conftest.claim_one_worker(tmp_path_factory, 'readme_recipes')
  box = Sandbox(tmp_path_factory.mktemp('readme_recipes'))
  yield box
  total = sum(box.seconds.values())
  print(f'\nREADME recipes: {len(box.seconds)} commands in {total:.0f} s:')
  for label, seconds in box.seconds.items():
    print(f'  {seconds:6.1f} s  {label}')


def _flag(words: list[str], name: str) -> str | None:
  """The value of the last `--name=value` in `words`."""
  values = [w.split('=', 1)[1] for w in words if w.startswith(f'--{name}=')]
  return values[-1] if values else None


def _substitute(word: str, box: Sandbox) -> str:
  """The substitutions of the module docstring, on one word."""
  word = box.expand(word)  # A leading `~`, as a shell does.
  prefix, eq, value = word.partition('=') if word.startswith('--') else (
      '', '', word)
  if value in OFFICIAL_WEIGHTS:
    value = str(FIXTURES_DIR / 'uec' / value)
  elif value.startswith('/tmp/'):
    value = str(box.tmp / value[len('/tmp/'):])
  # A placeholder file name (capitals, as NAME) in a stand-in folder.
  placeholder = re.search(r'/([A-Z][A-Z_]*)$', value)
  if placeholder and not box.local(value).exists():
    folder = box.local(value[:placeholder.start(1)])
    value = value[:placeholder.start(1)] + sorted(
        p.name for p in folder.iterdir() if p.is_file())[0]
  return prefix + eq + value


def cpu_overrides(module: str, words: list[str]) -> list[str]:
  """The CPU-sized settings appended to a command (module docstring)."""
  if module == 'expcorr_jax.evaluate':
    return [f'--config.eval.max_images={EVAL_IMAGES}']
  if module != 'expcorr_jax.main':
    return []
  config_path, _, config_arg = _flag(words, 'config').partition(':')
  method = pathlib.Path(config_path).stem
  arguments = {item.strip() for item in config_arg.split(',')}
  extra = [f'--config.num_train_steps={TRAIN_STEPS}',
           '--config.log_every_steps=1',
           f'--config.checkpoint_every_steps={TRAIN_STEPS}',
           f'--config.eval_every_steps={TRAIN_STEPS}',
           f'--config.eval.max_images={EVAL_IMAGES}',
           '--config.eval.num_grid_images=1', '--config.data.worker_count=0']
  if 'transform=whole' not in arguments:  # Whole images keep batch 1.
    extra.append('--config.batch_size=8')
    if 'transform=resize448' in arguments:
      extra.append('--config.data.resize_to=32')
    else:
      extra.append('--config.data.crop_size=32')
  if method == 'uec':
    extra.append('--config.model_encoder_height=32')
  elif method == 'recnet':
    extra += ['--config.model_num_blocks=1', '--config.loss.ecr_weight=0']
  elif method == 'erl_bcm':
    extra.append('--config.erl.token_size=4')  # t_e on 4x4 tokens.
  return extra


def command(recipe: readme_recipes.Recipe,
            box: Sandbox) -> tuple[list[str], dict[str, str]]:
  """The argv and environment `recipe` runs with."""
  words = recipe.words
  env = dict(box.env)
  while re.match(r'^[A-Za-z_][A-Za-z0-9_]*=', words[0]):
    name, _, value = words.pop(0).partition('=')
    env[name] = value
    if name == 'CUDA_VISIBLE_DEVICES' and ',' not in value:
      env['XLA_FLAGS'] = re.sub(r'device_count=\d+', 'device_count=1',
                                env.get('XLA_FLAGS', ''))
  assert words[:2] == ['python', '-m'], recipe.text
  args = [_substitute(word, box) for word in words[3:]]
  return ([sys.executable, '-m', recipe.module, *args,
           *cpu_overrides(recipe.module, args)], env)


def check_outputs(recipe: readme_recipes.Recipe, argv: list[str],
                  box: Sandbox) -> None:
  """What the command promises is there."""
  if recipe.module == 'data_prep.build':
    data_dir = _flag(argv, 'data_dir')
    data_dir = box.local(data_dir) if data_dir else box.tfds
    name = _flag(argv, 'dataset')
    prepared = list((data_dir / name).glob('*/dataset_info.json'))
    assert prepared, f'{name} is not prepared in {data_dir}'
    # Built from the stand-in the command names (its `~` expanded by the
    # tool to the temporary HOME).
    source = json.loads((prepared[0].parent / 'source.json').read_text())
    assert source['manual_dir'] == str(box.local(_flag(argv, 'manual_dir')))
  elif recipe.module == 'expcorr_jax.main':
    workdir = box.local(_flag(argv, 'workdir'))
    assert (workdir / 'checkpoints' / str(TRAIN_STEPS)).is_dir(), (
        sorted(p.name for p in workdir.rglob('*')))
    report = json.loads(
        (workdir / f'eval_step_{TRAIN_STEPS}.json').read_text())
    assert report['results'], report
  elif recipe.module == 'expcorr_jax.evaluate':
    output_dir = box.local(_flag(argv, 'output_dir'))
    name = _flag(argv, 'config.data.name') or 'multi_exposure/sample'
    split = _flag(argv, 'config.data.eval_split') or 'validation'
    stem = output_dir / f'eval_{name.replace("/", "-")}_{split}'
    report = json.loads(stem.with_suffix('.json').read_text())
    protocols = _flag(argv, 'config.eval.protocols')
    if protocols:
      assert set(report['results']) == set(re.findall(r"'(\w+)'", protocols))
    for protocol, result in report['results'].items():
      assert 0 < result['all']['count'] <= EVAL_IMAGES, (protocol, result)
    rows = stem.with_suffix('.csv').read_text().splitlines()
    assert len(rows) > 1, rows
    assert stem.with_suffix('.txt').read_text().strip()
    checkpoint = _flag(argv, 'checkpoint')
    assert report['checkpoint'] == str(box.local(checkpoint)), report


def _recipe_params():
  for recipe in RECIPES:
    marks = [pytest.mark.xfail(strict=True, reason=reason)
             for fragment, reason in KNOWN_BUGS.items()
             if fragment in recipe.text]
    yield pytest.param(recipe, id=recipe.test_id, marks=marks)


def test_the_readme_section_has_commands_for_every_subsection():
  counts = {}
  for recipe in RECIPES:
    counts[recipe.subsection] = counts.get(recipe.subsection, 0) + 1
  assert set(counts) == {'UEC', 'RECNet', 'ERL'}, counts
  modules = {recipe.module for recipe in RECIPES}
  assert modules == {'data_prep.build', 'expcorr_jax.main',
                     'expcorr_jax.evaluate'}, modules
  # Every manual_dir a command reads is one of the stand-in layouts.
  roots = {'MSEC', 'radiometry', 'SICE', 'LCDP', 'LOL'}
  for recipe in RECIPES:
    for word in recipe.words:
      match = re.search(r'manual_dir=~/(\w+)', word)
      if match:
        assert match.group(1) in roots, recipe.text


def test_every_table_cell_is_a_complete_command():
  """No build/train/evaluate cell of the section's tables points elsewhere
  ("as above with ...", "the MSEC command with ..."): each gives a command
  a user can paste, or says "none"."""
  assert readme_recipes.incomplete_cells(
      (REPO_ROOT / 'README.md').read_text()) == []


@pytest.mark.slow  # 1-35 s each; 33 commands in about 4 min on 2 cores.
@pytest.mark.parametrize('recipe', list(_recipe_params()))
def test_readme_recipe(recipe, sandbox):
  argv, env = command(recipe, sandbox)
  result = sandbox.run(argv, env, label=recipe.test_id)
  assert result.returncode == 0, (
      f'README command failed (exit {result.returncode}):\n  {recipe.text}\n'
      f'ran as:\n  {shlex.join(argv)}\n{result.stderr[-4000:]}')
  check_outputs(recipe, argv, sandbox)
  # A `~` the tools did not expand would have made a folder named '~'.
  assert not (REPO_ROOT / '~').exists()
  sandbox.passed.add(recipe.test_id)


def _workdir(sandbox: Sandbox, readme_workdir: str) -> pathlib.Path:
  """The workdir a README training command wrote, trained now if the
  recipes did not run before (e.g. under -k)."""
  recipe, = [r for r in RECIPES if r.module == 'expcorr_jax.main' and
             _flag(r.words, 'workdir') == readme_workdir]
  if recipe.test_id not in sandbox.passed:
    test_readme_recipe(recipe, sandbox)
  return sandbox.tmp / readme_workdir[len('/tmp/'):]


def _correct(sandbox: Sandbox, *args: str) -> subprocess.CompletedProcess:
  return sandbox.run([sys.executable, '-m', 'expcorr_jax.correct', *args],
                     label='correct ' + ' '.join(args)[:60])


@pytest.mark.slow  # About 7 s, or 30 s more when it trains the workdir.
def test_correct_cli_on_a_recipe_workdir_and_the_official_weights(sandbox):
  """README "Inference": `correct` on the MSEC row's training workdir and on
  the official .pth, with the README's `~` paths."""
  workdir = _workdir(sandbox, '/tmp/uec_msec')
  reference = '~/MSEC/training/GT_IMAGES/a0001-jmac_DSC1459.jpg'
  inputs = sandbox.home / 'MSEC' / 'testing' / 'INPUT_IMAGES'
  out = sandbox.tmp / 'corrected_workdir'
  result = _correct(sandbox, f'--checkpoint={workdir}',
                    f'--reference={reference}', f'--output_dir={out}',
                    '--noprogress', str(inputs))
  assert result.returncode == 0, result.stderr[-3000:]
  count = len(list(inputs.iterdir()))
  assert f'Corrected {count} images' in result.stdout, result.stdout
  assert sorted(p.name for p in out.iterdir()) == sorted(
      f'{p.stem}.png' for p in inputs.iterdir())
  with Image.open(next(out.iterdir())) as written:  # Full resolution.
    assert written.size == (standin_datasets.WIDTH, standin_datasets.HEIGHT)

  first = sorted(inputs.iterdir())[:2]
  result = _correct(
      sandbox, f'--checkpoint={FIXTURES_DIR / "uec" / OFFICIAL_WEIGHTS[0]}',
      '--model=uec', f'--reference={reference}',
      '--output_dir=~/corrected_official', '--noprogress', *map(str, first))
  out = sandbox.home / 'corrected_official'
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Corrected 2 images' in result.stdout, result.stdout
  assert sorted(p.name for p in out.iterdir()) == sorted(
      f'{p.stem}.png' for p in first)


@pytest.mark.parametrize('module, args, message', [
    # correct: a required flag missing, an unknown flag, a wrong checkpoint.
    ('expcorr_jax.correct',
     ['--checkpoint={weights}', '--model=uec', '--reference={image}',
      '{image}'], '--output_dir is required'),
    ('expcorr_jax.correct',
     ['--checkpoint={weights}', '--model=uec', '--reference={image}',
      '--outputdir={out}', '{image}'], "Unknown command line flag 'outputdir'"),
    ('expcorr_jax.correct',
     ['--checkpoint={weights}', '--reference={image}', '--output_dir={out}',
      '{image}'], 'records no method'),
    # evaluate: neither a checkpoint nor outputs, a misspelt config key.
    ('expcorr_jax.evaluate',
     ['--config=configs/uec.py', '--output_dir={out}'],
     'Give exactly one of --checkpoint'),
    ('expcorr_jax.evaluate',
     ['--config=configs/uec.py', '--checkpoint={weights}',
      '--output_dir={out}', '--config.eval.max_imges=2'],
     'Did you mean "max_images" instead of "max_imges"?'),
])
def test_cli_misuse_exits_nonzero_naming_the_problem(sandbox, module, args,
                                                    message):
  out = sandbox.tmp / 'misuse'
  image = (sandbox.home / 'MSEC' / 'training' / 'GT_IMAGES' /
           'a0001-jmac_DSC1459.jpg')
  weights = FIXTURES_DIR / 'uec' / OFFICIAL_WEIGHTS[0]
  argv = [sys.executable, '-m', module, *(
      a.format(weights=weights, image=image, out=out) for a in args)]
  result = sandbox.run(argv, label=f'{module} misuse: {message[:30]}')
  assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
  assert message in result.stderr, result.stderr[-3000:]
  assert not out.exists()
