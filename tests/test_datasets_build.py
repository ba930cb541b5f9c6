"""Tests of data_prep.build: crash safety, the CLI and the sample dataset.

A build that raises or is killed half-way must not leave a dataset that
looks prepared, and the next build must succeed. The embedded sample is
built for real, through the CLI, as a user would.
"""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

from absl import flags
import numpy as np
import pytest

from data_prep import build
from data_prep.datasets import multi_exposure
from data_prep import tiled_frames
from data_prep import sample_scenes

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
VERSION = str(multi_exposure.MultiExposure.VERSION)
NAME = 'multi_exposure/raw'


def text(value) -> str:
  return value.decode() if isinstance(value, bytes) else value


@pytest.fixture
def two_raws(shared_fixture, tmp_path):
  folder = tmp_path / 'raws'
  folder.mkdir()
  for scene in ('first', 'second'):
    shutil.copyfile(shared_fixture('raw/kodak_dc50.kdc'),
                    folder / f'{scene}.kdc')
  return folder


def config_dir(data_dir: pathlib.Path) -> pathlib.Path:
  return data_dir / 'multi_exposure' / 'raw'


def all_scenes(data_dir) -> list[str]:
  scenes = []
  for split in ('train', 'validation'):
    source = build.data_source(NAME, split, data_dir)
    scenes += [text(source[i]['scene']) for i in range(len(source))]
  return sorted(scenes)


def test_build_that_raises_leaves_nothing_prepared(two_raws, tmp_path,
                                                    monkeypatch):
  data_dir = tmp_path / 'data'
  real_split = tiled_frames.split_into_tiles
  calls = []

  def failing_split(image, *args, **kwargs):
    calls.append(1)  # One call per frame.
    if len(calls) > 5:  # The second scene.
      raise RuntimeError('simulated crash mid-build')
    return real_split(image, *args, **kwargs)

  monkeypatch.setattr(tiled_frames, 'split_into_tiles', failing_split)
  with pytest.raises(Exception, match='simulated crash mid-build'):
    build.ensure_prepared(NAME, data_dir, two_raws)
  assert not build.get_builder(NAME, data_dir).is_prepared()
  assert not (config_dir(data_dir) / VERSION).exists()
  with pytest.raises(build.DatasetNotPreparedError, match='not prepared'):
    build.data_source(NAME, 'train', data_dir)

  monkeypatch.undo()
  build.ensure_prepared(NAME, data_dir, two_raws)
  assert all_scenes(data_dir) == ['first', 'second']


_KILLED_BUILD = textwrap.dedent('''
    import pathlib, sys, time
    from data_prep import build, tiled_frames
    marker, data_dir, manual_dir = sys.argv[1:]
    real_split = tiled_frames.split_into_tiles
    calls = []
    def stalling_split(image, *args, **kwargs):
      calls.append(1)  # One call per frame.
      if len(calls) > 5:  # First scene done: wait here to be killed.
        pathlib.Path(marker).touch()
        time.sleep(120)
      return real_split(image, *args, **kwargs)
    tiled_frames.split_into_tiles = stalling_split
    build.ensure_prepared('multi_exposure/raw', data_dir, manual_dir)
''')


def test_killed_build_is_not_prepared_and_rebuilds(two_raws, tmp_path):
  data_dir = tmp_path / 'data'
  marker = tmp_path / 'first_scene_done'
  process = subprocess.Popen(
      [sys.executable, '-c', _KILLED_BUILD, str(marker), str(data_dir),
       str(two_raws)], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE)
  try:
    deadline = time.monotonic() + 60
    while not marker.exists():
      if process.poll() is not None or time.monotonic() > deadline:
        raise AssertionError('The build never reached its second scene: '
                             + process.stderr.read().decode()[-2000:])
      time.sleep(0.05)
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()

  leftovers = list(config_dir(data_dir).glob('incomplete.*'))
  assert leftovers, 'TFDS should have been writing to an incomplete.* folder'
  assert not (config_dir(data_dir) / VERSION).exists()
  with pytest.raises(build.DatasetNotPreparedError):
    build.data_source(NAME, 'train', data_dir)

  build.ensure_prepared(NAME, data_dir, two_raws)
  assert all_scenes(data_dir) == ['first', 'second']
  assert not list(config_dir(data_dir).glob('incomplete.*'))


def test_cli_main_and_ensure_prepared_is_idempotent(two_raws, tmp_path,
                                                    capsys):
  data_dir = tmp_path / 'data'
  flag_values = flags.FlagValues()
  build.define_flags(flag_values)
  argv = flag_values(['build', f'--dataset={NAME}', f'--data_dir={data_dir}',
                      f'--manual_dir={two_raws}'])
  build.main(argv, flag_values)
  assert 'is prepared in' in capsys.readouterr().out
  info = config_dir(data_dir) / VERSION / 'dataset_info.json'
  stamp = info.stat().st_mtime_ns
  build.ensure_prepared(NAME, data_dir, two_raws)  # Already there: no-op.
  assert info.stat().st_mtime_ns == stamp


def test_unknown_dataset_is_named():
  with pytest.raises(ValueError, match="Unknown dataset 'mnist'"):
    build.get_builder('mnist', None)


def test_sample_dataset_via_cli(tmp_path):
  data_dir = tmp_path / 'data'
  result = subprocess.run(
      [sys.executable, '-m', 'data_prep.build',
       '--dataset=multi_exposure/sample', f'--data_dir={data_dir}'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'TQDM_DISABLE': '1'})
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'multi_exposure/sample is prepared' in result.stdout

  seen = {}
  for split in ('train', 'validation'):
    source = build.data_source('multi_exposure/sample', split, data_dir)
    for index in range(len(source)):
      record = source[index]
      scene = text(record['scene'])
      seen[scene] = split
      assert sample_scenes.sample_split(scene) == split
      assert text(record['source']) == 'sample'
      assert text(record['camera']) == 'expcorr Synthetic RGGB-14'
      np.testing.assert_array_equal(record['evs'],
                                    (-1.5, -1.0, 0.0, 1.0, 1.5))
      frames = [frame.decode() for frame in record['frames']]
      for frame in frames:
        assert frame.shape == (record['height'], record['width'], 3)
        assert frame.dtype == np.uint8
      means = [frame.mean() for frame in frames]
      assert means == sorted(means)
  assert sorted(seen) == sorted(sample_scenes.SAMPLE_SCENES)
