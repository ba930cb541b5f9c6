"""The RAW-rendering builds on Apache Beam give the local build's dataset.

Each Beam build runs on Beam's DirectRunner with 2 worker processes
(`direct_running_mode=multi_processing`), the way a cluster runs it: the
renders happen in other processes, and what the pipeline computes reaches
the dataset's metadata through files. The RAW folder holds copies of the
Kodak DC50 fixture and a truncated RAW, which both builds must leave out,
reported by name.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from data_prep import build
from data_prep import render_raw
from data_prep import storage

if os.environ.get('CI', '').lower() != 'true':
  pytest.importorskip('apache_beam', reason="needs the .[beam] extra: pip "
                      "install -e '.[test,beam]'")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TWO_WORKERS = 'direct_num_workers=2,direct_running_mode=multi_processing'
SCENES = ('kodak_one', 'kodak two_2', 'kodak-three', 'k4')


@pytest.fixture
def raws(shared_fixture, tmp_path) -> pathlib.Path:
  """Four copies of the RAW fixture, a truncated RAW and a text file."""
  fixture = shared_fixture('raw/kodak_dc50.kdc')
  folder = tmp_path / 'raws'
  (folder / 'nested').mkdir(parents=True)
  for index, scene in enumerate(SCENES):
    target = folder / ('nested' if index % 2 else '') / f'{scene}.kdc'
    target.write_bytes(fixture.read_bytes())
  (folder / 'broken.kdc').write_bytes(fixture.read_bytes()[:5000])
  (folder / 'notes.txt').write_text('not a RAW file')
  return folder


def _version_dir(name: str, data_dir: pathlib.Path) -> pathlib.Path:
  return pathlib.Path(os.fspath(build.get_builder(name, data_dir).data_dir))


def _examples(name: str, split: str, data_dir) -> list[bytes]:
  """Every record of a split, parsed and serialised deterministically
  (protobuf's map order can differ between processes)."""
  records = tfds.data_source(name, split=split, data_dir=str(data_dir),
                             download=False).data_source
  return [tf_example_pb2.Example.FromString(records[i]).SerializeToString(
      deterministic=True) for i in range(len(records))]


def assert_same_dataset(name: str, local: pathlib.Path, beam: pathlib.Path):
  """Same splits, record counts, every record (in order), metadata.json and
  source record."""
  local_dir, beam_dir = _version_dir(name, local), _version_dir(name, beam)
  for file in ('metadata.json', 'source.json'):
    assert (json.loads((beam_dir / file).read_text()) ==
            json.loads((local_dir / file).read_text())), file
  local_info = build.get_builder(name, local).info
  beam_info = build.get_builder(name, beam).info
  assert ({s: i.num_examples for s, i in beam_info.splits.items()} ==
          {s: i.num_examples for s, i in local_info.splits.items()})
  assert set(local_info.splits) == {'train', 'validation'}
  for split in local_info.splits:
    assert _examples(name, split, beam) == _examples(name, split, local)
  assert not list(beam_dir.glob('beam_metadata*'))  # Temporary, removed.


def test_cli_beam_build_equals_local_build(raws, tmp_path):
  """The issue's command: every scene, split and frame as the local build,
  read back through `build.data_source`; the bad RAW named in the log."""
  name = 'multi_exposure/raw'
  build.ensure_prepared(name, tmp_path / 'local', raws)
  result = subprocess.run(
      [sys.executable, '-m', 'data_prep.build', f'--dataset={name}',
       f'--data_dir={tmp_path / "beam"}', f'--manual_dir={raws}',
       f'--beam_pipeline_options={TWO_WORKERS}'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Skipping RAW' in result.stderr and 'broken.kdc' in result.stderr
  assert 'raws_readable 4, raws_left_out 1, scenes_rendered 4' in (
      result.stderr)
  assert_same_dataset(name, tmp_path / 'local', tmp_path / 'beam')

  left_out = json.loads((_version_dir(name, tmp_path / 'beam') /
                         'metadata.json').read_text())['left_out']
  assert [item['example'] for item in left_out] == ['broken.kdc']
  for split in ('train', 'validation'):
    local = build.data_source(name, split, tmp_path / 'local')
    beam = build.data_source(name, split, tmp_path / 'beam')
    assert len(beam) == len(local)
    for index in range(len(local)):
      assert beam[index]['scene'] == local[index]['scene']
      for ours, theirs in zip(beam[index]['frames'], local[index]['frames']):
        np.testing.assert_array_equal(ours.decode(), theirs.decode())


def test_mixed_exposure_beam_build_equals_local_build(raws, tmp_path):
  name = 'mixed_exposure/raw'
  build.ensure_prepared(name, tmp_path / 'local', raws)
  build.ensure_prepared(name, tmp_path / 'beam', raws,
                        beam_pipeline_options=TWO_WORKERS)
  assert_same_dataset(name, tmp_path / 'local', tmp_path / 'beam')


def test_rendered_folder_beam_build_equals_local_build(raws, tmp_path):
  """`multi_exposure/rendered` (render_raw's output) with a truncated frame
  in one scene: the scene is left out and recorded alike."""
  rendered = tmp_path / 'rendered'
  summary = render_raw.render_files([raws], rendered, half_size=True,
                                    workers=1, progress=False)
  assert len(summary.rendered) == len(SCENES)
  broken = rendered / 'k4_P1.png'
  broken.write_bytes(broken.read_bytes()[:300])
  name = 'multi_exposure/rendered'
  build.ensure_prepared(name, tmp_path / 'local', rendered)
  build.ensure_prepared(name, tmp_path / 'beam', rendered,
                        beam_pipeline_options=TWO_WORKERS)
  assert_same_dataset(name, tmp_path / 'local', tmp_path / 'beam')
  metadata = build.get_builder(name, tmp_path / 'beam').info.metadata
  assert [item['example'] for item in metadata['left_out']] == ['k4']
  assert sum(metadata['kept'].values()) == len(SCENES) - 1


def test_too_few_readable_raws_fail_with_the_reason(shared_fixture, tmp_path):
  """Two RAWs listed, one readable: a Beam build cannot write the empty
  validation split and says so (a local build writes train alone)."""
  fixture = shared_fixture('raw/kodak_dc50.kdc')
  folder = tmp_path / 'raws'
  folder.mkdir()
  (folder / 'good.kdc').write_bytes(fixture.read_bytes())
  (folder / 'broken.kdc').write_bytes(fixture.read_bytes()[:5000])
  with pytest.raises(Exception, match=r'only 1 of the 2 RAW files are '
                     r'readable.*without --beam_pipeline_options'):
    build.ensure_prepared('multi_exposure/raw', tmp_path / 'beam', folder,
                          beam_pipeline_options='direct_num_workers=1')
  assert not build.get_builder('multi_exposure/raw',
                               tmp_path / 'beam').is_prepared()


def test_bad_beam_options_and_datasets_are_refused(raws, tmp_path):
  """A misspelt option is named, not dropped; the copied benchmark sets
  refuse Beam."""
  with pytest.raises(ValueError, match='direct_runing_mode'):
    build.ensure_prepared('multi_exposure/raw', tmp_path, raws,
                          beam_pipeline_options='direct_runing_mode=x')
  with pytest.raises(ValueError, match='msec does not build on Beam'):
    build.ensure_prepared('msec', tmp_path, raws,
                          beam_pipeline_options=TWO_WORKERS)


def test_beam_workers_read_raws_from_and_write_the_dataset_to_a_bucket(
    gcs_bucket, raws, tmp_path):
  """RAW folder and data_dir in a bucket (a GCS-compatible server on
  127.0.0.1): the workers read the RAWs and write the shards there; the
  dataset equals a local build of the same files, and nothing of the
  staging is left."""
  name = 'multi_exposure/raw'
  for file in storage.files_under(raws):
    storage.path(f'{gcs_bucket}/raws/{file.relative_to(raws)}').write_bytes(
        file.read_bytes())
  build.ensure_prepared(name, f'{gcs_bucket}/tfds', f'{gcs_bucket}/raws',
                        beam_pipeline_options=TWO_WORKERS)
  build.ensure_prepared(name, tmp_path / 'local', raws)

  remote_builder = build.get_builder(name, f'{gcs_bucket}/tfds')
  local_builder = build.get_builder(name, tmp_path / 'local')
  assert remote_builder.is_prepared()
  assert remote_builder.info.metadata == local_builder.info.metadata
  assert [item['example'] for item in
          remote_builder.info.metadata['left_out']] == ['broken.kdc']
  for split in ('train', 'validation'):
    assert (_examples(name, split, f'{gcs_bucket}/tfds') ==
            _examples(name, split, tmp_path / 'local'))
    remote = build.data_source(name, split, f'{gcs_bucket}/tfds')
    local = build.data_source(name, split, tmp_path / 'local')
    assert len(remote) == len(local) > 0
    for index in range(len(local)):
      for got, want in zip(remote[index]['frames'], local[index]['frames'],
                           strict=True):
        np.testing.assert_array_equal(got.decode(), want.decode())
  assert not storage.path(
      f'{gcs_bucket}/tfds/{build.BEAM_STAGING_FOLDER}').exists()
  recorded = json.loads((storage.path(remote_builder.data_dir) /
                         'source.json').read_text())
  local_record = json.loads(
      (_version_dir(name, tmp_path / 'local') / 'source.json').read_text())
  assert recorded == {**local_record, 'manual_dir': f'{gcs_bucket}/raws'}


def test_the_direct_runner_runs_on_beams_fn_api_runner():
  """DirectRunner options get the FnApiRunner (worker processes as asked,
  no runner binary downloaded); other runners are left to Beam."""
  from apache_beam.runners.portability.fn_api_runner import fn_runner  # pylint: disable=g-import-not-at-top
  from data_prep.datasets import raw_beam  # pylint: disable=g-import-not-at-top
  for text in (TWO_WORKERS, f'runner=DirectRunner,{TWO_WORKERS}'):
    assert isinstance(raw_beam.direct_runner(build.beam_options(text)),
                      fn_runner.FnApiRunner)
  assert raw_beam.direct_runner(build.beam_options(
      'runner=DataflowRunner,project=p,region=r')) is None
