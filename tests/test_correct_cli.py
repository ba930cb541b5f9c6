"""Tests of the `expcorr_jax.correct` CLI on small generated photos.

Most runs are in-process (`correct.run` parses flags into fresh FlagValues);
one subprocess run covers `python -m` on a 4000x3000 JPEG. Photos share a few
sizes so the (shared) compile cache keeps the runs quick. The checkpoint is a
tiny UEC training checkpoint (tests/checkpoint_writer.py) of
`test_inference`'s random params.
"""

import io
import pathlib
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import pytest

from data_prep import image_codec
from expcorr_jax import correct
from expcorr_jax import inference
import checkpoint_writer  # tests/ is on sys.path.
import test_inference  # Its UEC params helpers.

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
H, W = 45, 31  # Odd; the upright size of every good photo below.


def _pixels(shape, seed, dtype=np.uint8):
  """Smooth random-ish pixels: gradients plus noise, so JPEG keeps them."""
  rng = np.random.default_rng(seed)
  h, w = shape
  ramp = np.linspace(0, 1, h)[:, None, None] * np.linspace(0.3, 1, w)[:, None]
  noise = rng.normal(0, 0.02, (h, w, 3))
  image = np.clip(ramp * rng.uniform(0.2, 1, 3) + noise, 0, 1)
  scale = 65535 if dtype == np.uint16 else 255
  return np.round(image * scale).astype(dtype)


def _jpeg_with_orientation(path, image, orientation):
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.fromarray(image).save(path, format='JPEG', quality=95, exif=exif)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  path = tmp_path_factory.mktemp('workdir')
  checkpoint_writer.write_params_checkpoint(
      path, test_inference.random_uec_params(),
      {'model': 'uec', 'model_encoder_height': test_inference.ENCODER_HEIGHT})
  return path


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  path = tmp_path_factory.mktemp('ref') / 'reference.png'
  image_codec.write_png(path, _pixels((30, 30), 99))
  return path


@pytest.fixture
def photos(tmp_path):
  """Good photos of each kind, a corrupt one, and files to be ignored."""
  folder = tmp_path / 'photos'
  (folder / 'nested').mkdir(parents=True)
  # Stored landscape (W x H); orientation 6 (rotate 90 CW) makes it H x W.
  _jpeg_with_orientation(folder / 'rotated.JPG',
                         np.ascontiguousarray(_pixels((W, H), 1)), 6)
  image_codec.write_png(folder / 'deep.png', _pixels((H, W), 2, np.uint16))
  Image.fromarray(_pixels((H, W), 3)).save(folder / 'scan.TIFF')
  image_codec.write_png(folder / 'odd.png', _pixels((H, W), 4))
  (folder / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a JPEG')
  (folder / 'notes.txt').write_text('not an image')
  image_codec.write_png(folder / 'nested' / 'inner.png', _pixels((H, W), 5))
  return folder


def _args(checkpoint, reference, out, *extra):
  return [f'--checkpoint={checkpoint}', f'--reference={reference}',
          f'--output_dir={out}', '--noprogress', *map(str, extra)]


def _read_png(path):
  return image_codec.decode_image(pathlib.Path(path).read_bytes())


def _expected(corrector, path, reference, bits):
  out = corrector(image_codec.read_image(path),
                  image_codec.read_image(reference))
  if bits == 16:
    return np.round(out * 65535).astype(np.uint16)
  return np.round(out * 255).astype(np.uint8)


def test_corrects_a_folder_and_skips_the_corrupt_file(
    checkpoint, reference, photos, tmp_path, caplog, capsys):
  out = tmp_path / 'out'
  assert correct.run(_args(checkpoint, reference, out, photos)) == 0
  assert sorted(p.name for p in out.iterdir()) == [
      'deep.png', 'odd.png', 'rotated.png', 'scan.png']
  corrector = inference.Corrector.from_checkpoint(checkpoint)
  for name, bits in (('rotated.JPG', 8), ('deep.png', 16), ('scan.TIFF', 8),
                     ('odd.png', 8)):
    written = _read_png(out / f'{pathlib.Path(name).stem}.png')
    assert written.shape == (H, W, 3), name  # EXIF rotation applied.
    assert written.dtype == (np.uint16 if bits == 16 else np.uint8), name
    np.testing.assert_array_equal(
        written, _expected(corrector, photos / name, reference, bits), name)
  assert 'Skipped' in caplog.text and 'broken.jpg' in caplog.text
  assert 'Corrupt or unsupported' in caplog.text
  assert 'Corrected 4 images' in capsys.readouterr().out
  assert '1 failed' in correct.correct_files(
      corrector, [photos / 'broken.jpg', photos / 'odd.png'], tmp_path / 'o2',
      reference=image_codec.read_image(reference),
      progress=False).summary_line()


def test_exit_status_is_nonzero_when_nothing_is_corrected(
    checkpoint, reference, tmp_path):
  folder = tmp_path / 'bad'
  folder.mkdir()
  (folder / 'a.jpg').write_bytes(b'garbage')
  (folder / 'b.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
  out = tmp_path / 'out'
  assert correct.run(_args(checkpoint, reference, out, folder)) == 1
  assert not list(out.glob('*.png'))


def test_bits_and_skip_existing(checkpoint, reference, photos, tmp_path):
  out = tmp_path / 'out'
  args = _args(checkpoint, reference, out, photos / 'deep.png',
               photos / 'odd.png')
  assert correct.run(args + ['--bits=8']) == 0
  assert _read_png(out / 'deep.png').dtype == np.uint8
  assert correct.run(args + ['--bits=16']) == 0
  assert _read_png(out / 'odd.png').dtype == np.uint16
  corrector = inference.Corrector.from_checkpoint(checkpoint)
  np.testing.assert_array_equal(
      _read_png(out / 'odd.png'),
      _expected(corrector, photos / 'odd.png', reference, 16))
  stamp = (out / 'odd.png').stat().st_mtime_ns
  time.sleep(0.01)
  assert correct.run(args + ['--skip_existing']) == 0
  assert (out / 'odd.png').stat().st_mtime_ns == stamp


def test_bad_invocations_are_usage_errors(checkpoint, reference, photos,
                                          tmp_path):
  out = tmp_path / 'out'
  cases = [
      (_args(tmp_path / 'nowhere', reference, out, photos), 'No checkpoint'),
      (_args(tmp_path / 'nowhere.pth', reference, out, photos),
       'No checkpoint file'),
      (_args(checkpoint, tmp_path / 'none.png', out, photos),
       '--reference: no file'),
      (_args(checkpoint, photos / 'broken.jpg', out, photos),
       '--reference: Cannot read image'),
      ([f'--checkpoint={checkpoint}', f'--output_dir={out}', photos],
       '--reference is required'),
      ([f'--reference={reference}', f'--output_dir={out}', photos],
       '--checkpoint is required'),
      (_args(checkpoint, reference, out), 'Give image files'),
      (_args(checkpoint, reference, out, photos / 'missing.jpg'),
       'neither a file nor a directory'),
      (_args(checkpoint, reference, out, photos / 'nested' / 'inner.png',
             photos / 'nested', photos / 'odd.png',
             tmp_path / 'other' / 'ODD.jpg'),
       'share the name'),
      (_args(checkpoint, reference, photos / 'nested',
             photos / 'nested' / 'inner.png'), 'would overwrite an input'),
      (_args(checkpoint, reference, out, tmp_path), 'No images'),
      (_args(checkpoint, reference, out, '--bits=12', photos), 'bits'),
      (_args(checkpoint, reference, out, '--model=erl', photos), 'model'),
  ]
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'ODD.jpg').write_bytes(b'')
  for args, message in cases:
    with pytest.raises(app.UsageError, match=message):
      correct.run([str(a) for a in args])
  assert not out.exists()


def test_wrong_kind_of_checkpoint_is_a_usage_error(reference, photos,
                                                  tmp_path):
  workdir = tmp_path / 'recnet_run'
  checkpoint_writer.write_params_checkpoint(
      workdir, test_inference.random_uec_params(), {'model': 'recnet'})
  # --model is a check against the method the checkpoint records.
  with pytest.raises(app.UsageError, match="holds a 'recnet' checkpoint, not "
                     "'uec'"):
    correct.run(_args(workdir, reference, tmp_path / 'out', '--model=uec',
                      photos))
  # Without it the checkpoint's own method is used, and its params must fit.
  with pytest.raises(app.UsageError, match='do not fit a RECNet model'):
    correct.run(_args(workdir, reference, tmp_path / 'out', photos))


def test_find_images_is_flat_sorted_and_deduplicated(photos):
  found = correct.find_images([photos / 'odd.png', photos,
                               photos / 'nested' / '..' / 'odd.png'])
  assert [p.name for p in found] == [
      'odd.png', 'broken.jpg', 'deep.png', 'rotated.JPG', 'scan.TIFF']


def test_importing_defines_no_global_flags():
  assert 'checkpoint' not in flags.FLAGS and 'output_dir' not in flags.FLAGS
  for _ in range(2):  # Fresh FlagValues each time: no duplicate definitions.
    correct.define_flags(flags.FlagValues())


@pytest.mark.slow  # About 30 s alone, 55 s on a loaded 2-core machine.
def test_python_m_corrects_a_4000x3000_jpeg(checkpoint, reference, tmp_path):
  folder = tmp_path / 'big'
  folder.mkdir()
  y, x = np.mgrid[0:3000, 0:4000]
  image = np.stack([x * 255 // 3999, y * 255 // 2999,
                    (x + y) * 255 // 6998], axis=-1).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='JPEG', quality=90)
  (folder / 'big.jpg').write_bytes(buffer.getvalue())
  out = tmp_path / 'out'
  start = time.time()
  result = subprocess.run(
      [sys.executable, '-m', 'expcorr_jax.correct',
       *_args(checkpoint, reference, out, folder / 'big.jpg')],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  print(f'4000x3000 through the CLI: {time.time() - start:.1f} s')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Corrected 1 image into' in result.stdout
  with Image.open(out / 'big.png') as written:
    assert written.size == (4000, 3000) and written.mode == 'RGB'
