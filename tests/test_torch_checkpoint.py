"""Tests of the torch-free, allow-listed `.pth` reader.

Checkpoints are written by hand here (torch is not a dependency): a tiny
protocol-2 opcode writer emits the same GLOBAL / BINPERSID / REDUCE sequence
that `torch.save` produces, so the tests control every byte, including
malicious ones.
"""

import pathlib
import zipfile

import numpy as np
import pytest

from expcorr_jax.weights import unpickling
from expcorr_jax.weights.unpickling import CheckpointFormatError
from expcorr_jax.weights.unpickling import UnsafeCheckpointError
import pth_writer  # tests/ is on sys.path.

_UEC_SHAPES = {
    'image_encoder.conv1.weight': (32, 3, 7, 7),
    'image_encoder.conv1.bias': (32,),
    'image_encoder.conv2.weight': (32, 32, 3, 3),
    'image_encoder.conv2.bias': (32,),
    'mExCorrector.ex_block.encoder.weight': (64, 3, 1, 1),
    'mExCorrector.ex_block.encoder.bias': (64,),
    'mExCorrector.ex_block.mid_conv.weight': (64, 64, 1, 1),
    'mExCorrector.ex_block.mid_conv.bias': (64,),
    'mExCorrector.ex_block.decoder.weight': (3, 64, 1, 1),
    'mExCorrector.ex_block.decoder.bias': (3,),
    'mDiffPredictor.fc3.weight': (8, 96),
    'mDiffPredictor.fc3.bias': (8,),
    'mDiffPredictor.fc4.weight': (1, 16),
    'mDiffPredictor.fc4.bias': (1,),
}

# --- Real checkpoints. ------------------------------------------------------

@pytest.mark.parametrize('name', ['exposure-errors.pth', 'radiometry.pth'])
def test_official_uec_checkpoints(shared_fixture, name):
  state = unpickling.load_state_dict(shared_fixture(f'uec/{name}'))
  assert {k: v.shape for k, v in state.items()} == _UEC_SHAPES
  assert all(v.dtype == np.float32 for v in state.values())
  assert sum(v.size for v in state.values()) == 19388
  assert all(np.isfinite(v).all() for v in state.values())


# --- Hand-written checkpoints. ----------------------------------------------

def test_round_trip_dtypes(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {
      'w': rng.normal(size=(4, 3, 2, 2)).astype(np.float32),
      'd': rng.normal(size=(5,)),
      'h': rng.normal(size=(2, 3)).astype(np.float16),
      'i': rng.integers(-9, 9, size=(7,)),
      'b': rng.random((3, 3)) > 0.5,
      'u': rng.integers(0, 255, size=(2, 2), dtype=np.uint8),
      'scalar': np.array(3.5, np.float32),
      'empty': np.zeros((0, 4), np.float32),
  }
  path = pth_writer.write_state_dict(tmp_path / 'm.pth', arrays)
  state = unpickling.load_state_dict(path)
  assert list(state) == list(arrays)
  for name, a in arrays.items():
    assert state[name].dtype == a.dtype, name
    np.testing.assert_array_equal(state[name], a)


def test_non_contiguous_and_shared_storage(tmp_path):
  base = np.arange(12, dtype=np.float32).reshape(3, 4)
  items = [
      # base.T: size (4, 3), stride (1, 4) over the same storage.
      ('t', pth_writer.tensor('0', np.float32, 12, 0, (4, 3), (1, 4))),
      ('base', pth_writer.tensor('0', np.float32, 12, 0, (3, 4), (4, 1))),
      # base[1:, 1::2]: offset 5, size (2, 2), stride (4, 2).
      ('view', pth_writer.tensor('0', np.float32, 12, 5, (2, 2), (4, 2))),
      # A broadcast (stride 0) row.
      ('bcast', pth_writer.tensor('0', np.float32, 12, 4, (2, 4), (0, 1))),
  ]
  path = pth_writer.write_zip(tmp_path / 'v.pth', pth_writer.pickle(pth_writer.ordered_dict(items)),
                    {'0': base.tobytes()})
  state = unpickling.load_state_dict(path)
  np.testing.assert_array_equal(state['t'], base.T)
  np.testing.assert_array_equal(state['base'], base)
  np.testing.assert_array_equal(state['view'], base[1:, 1::2])
  np.testing.assert_array_equal(state['bcast'], np.stack([base[1]] * 2))
  assert state['t'].flags.c_contiguous and state['t'].flags.writeable
  state['t'][0, 0] = -1  # A copy: must not alias the other tensors.
  assert state['base'][0, 0] == 0


def test_out_of_bounds_view_is_refused(tmp_path):
  items = [('x', pth_writer.tensor('0', np.float32, 4, 2, (2, 2), (2, 1)))]
  path = pth_writer.write_zip(tmp_path / 'oob.pth', pth_writer.pickle(pth_writer.ordered_dict(items)),
                    {'0': np.zeros(4, np.float32).tobytes()})
  with pytest.raises(CheckpointFormatError, match='reads element 5'):
    unpickling.load_state_dict(path)


def test_big_endian_byteorder_and_untyped_storage(tmp_path):
  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  items = [('a', pth_writer.tensor('0', np.float32, 6, 0, (2, 3), (3, 1))),
           ('u', pth_writer.tensor('1', np.uint8, 3, 0, (3,), (1,),
                         storage_module='torch.storage',
                         storage_name='UntypedStorage'))]
  path = pth_writer.write_zip(tmp_path / 'be.pth', pth_writer.pickle(pth_writer.ordered_dict(items)),
                    {'0': a.astype('>f4').tobytes(), '1': b'\x01\x02\x03'},
                    byteorder='big')
  state = unpickling.load_state_dict(path)
  np.testing.assert_array_equal(state['a'], a)
  assert state['a'].dtype == np.float32 and state['a'].dtype.isnative
  np.testing.assert_array_equal(state['u'], [1, 2, 3])


def test_unwraps_state_dict_module_prefix_and_parameters(tmp_path):
  w = np.ones((2, 2), np.float32)
  param = pth_writer.call(pth_writer.global_op('torch._utils', '_rebuild_parameter'),
                pth_writer.tensor('0', np.float32, 4, 0, (2, 2), (2, 1)), True,
                pth_writer.ordered_dict([]))
  inner = pth_writer.ordered_dict([('module.fc.weight', param)])
  top = (b'}' + pth_writer.value('epoch') + pth_writer.value(7) + b's'
         + pth_writer.value('state_dict') + inner + b's')
  path = pth_writer.write_zip(tmp_path / 'wrapped.pth', pth_writer.pickle(top), {'0': w.tobytes()},
                    prefix='wrapped')
  state = unpickling.load_state_dict(path)
  assert list(state) == ['fc.weight']
  np.testing.assert_array_equal(state['fc.weight'], w)


@pytest.mark.parametrize('module,name', [
    ('os', 'system'), ('posix', 'system'), ('builtins', 'eval'),
    ('subprocess', 'call'), ('torch', 'load'), ('torch._utils', 'os')])
def test_malicious_globals_are_refused_without_running(tmp_path, module, name):
  marker = tmp_path / 'pwned'
  command = f'open({str(marker)!r}, "w").close()'
  if name == 'system' or name == 'call':
    command = f'touch {marker}'
  payload = pth_writer.call(pth_writer.global_op(module, name), command)
  # Hide the payload behind a valid tensor, as a value of the state_dict.
  items = [('ok', pth_writer.tensor('0', np.float32, 1, 0, (1,), (1,))),
           ('evil', payload)]
  path = pth_writer.write_zip(tmp_path / 'evil.pth', pth_writer.pickle(pth_writer.ordered_dict(items)),
                    {'0': np.zeros(1, np.float32).tobytes()})
  with pytest.raises(UnsafeCheckpointError,
                     match=f'references global {module}.{name}, refusing'):
    unpickling.load_state_dict(path)
  assert not marker.exists()


def test_malicious_storage_type_is_refused(tmp_path):
  marker = tmp_path / 'pwned'
  items = [('x', pth_writer.tensor('0', np.float32, 1, 0, (1,), (1,),
                         storage_module='os', storage_name='system'))]
  path = pth_writer.write_zip(tmp_path / 'evil.pth', pth_writer.pickle(pth_writer.ordered_dict(items)),
                    {'0': np.zeros(1, np.float32).tobytes()})
  with pytest.raises(UnsafeCheckpointError, match='os.system'):
    unpickling.load_state_dict(path)
  assert not marker.exists()


def test_non_zip_files(tmp_path):
  text = tmp_path / 'notes.pth'
  text.write_text('hello')
  with pytest.raises(CheckpointFormatError, match='not a PyTorch zip'):
    unpickling.load_state_dict(text)
  legacy = tmp_path / 'legacy.pth'
  # Legacy files open with a pickled LONG1 magic number, then more pickles.
  legacy.write_bytes(pth_writer.pickle(b'\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19'))
  with pytest.raises(CheckpointFormatError, match='legacy .*unsupported'):
    unpickling.load_state_dict(legacy)
  other_zip = tmp_path / 'other.zip'
  with zipfile.ZipFile(other_zip, 'w') as z:
    z.writestr('readme.txt', 'x')
  with pytest.raises(CheckpointFormatError, match='not a torch.save'):
    unpickling.load_state_dict(other_zip)


def test_missing_file_and_missing_storage(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    unpickling.load_state_dict(tmp_path / 'absent.pth')
  items = [('x', pth_writer.tensor('0', np.float32, 1, 0, (1,), (1,)))]
  path = pth_writer.write_zip(tmp_path / 'nostorage.pth', pth_writer.pickle(pth_writer.ordered_dict(items)))
  with pytest.raises(CheckpointFormatError, match='missing from the archive'):
    unpickling.load_state_dict(path)


def test_non_tensor_content_is_refused(tmp_path):
  path = pth_writer.write_zip(tmp_path / 'list.pth', pth_writer.pickle(b']'))
  with pytest.raises(CheckpointFormatError, match='not a state_dict'):
    unpickling.load_state_dict(pathlib.Path(path))


@pytest.mark.parametrize('variant', ['inst', 'stack_global', 'newobj'])
def test_other_global_opcodes_are_refused(tmp_path, variant):
  marker = tmp_path / 'pwned'
  command = pth_writer.value(f'touch {marker}')
  if variant == 'inst':  # INST: MARK args INST module\nname\n
    ops = b'(' + command + b'ios\nsystem\n'
  elif variant == 'stack_global':  # Protocol 4: names from the stack.
    ops = pth_writer.value('os') + pth_writer.value('system') + b'\x93' + b'(' + command + b'tR'
  else:  # NEWOBJ on a refused class.
    ops = pth_writer.global_op('subprocess', 'Popen') + b'(' + command + b't\x81'
  path = pth_writer.write_zip(tmp_path / 'evil.pth', b'\x80\x04' + ops + b'.')
  with pytest.raises(UnsafeCheckpointError, match='refusing to load'):
    unpickling.load_state_dict(path)
  assert not marker.exists()


def test_expanding_a_small_storage_past_the_cap_is_refused(tmp_path):
  # torch.save({'w': torch.ones(1).expand(50000, 50000)}): one stored
  # element, stride 0, 10 GB if materialised.
  items = [('w', pth_writer.tensor('0', np.float32, 1, 0, (50000, 50000),
                                   (0, 0)))]
  path = pth_writer.write_zip(
      tmp_path / 'bomb.pth', pth_writer.pickle(pth_writer.ordered_dict(items)),
      {'0': np.ones(1, np.float32).tobytes()})
  with pytest.raises(UnsafeCheckpointError,
                     match=r'expand its 1-element storage to 2500000000'):
    unpickling.load_state_dict(path)
  # A small expansion (torch.ones(1).expand(3)) still loads.
  items = [('w', pth_writer.tensor('0', np.float32, 1, 0, (3,), (0,)))]
  path = pth_writer.write_zip(
      tmp_path / 'small.pth', pth_writer.pickle(pth_writer.ordered_dict(items)),
      {'0': np.full(1, 2.0, np.float32).tobytes()})
  np.testing.assert_array_equal(unpickling.load_state_dict(path)['w'],
                                [2.0, 2.0, 2.0])


def test_storage_sizes_are_checked_before_reading(tmp_path):
  # The pickle says one float32 element; the member declares 40 MB.
  items = [('w', pth_writer.tensor('0', np.float32, 1, 0, (1,), (1,)))]
  path = pth_writer.write_zip(
      tmp_path / 'long.pth', pth_writer.pickle(pth_writer.ordered_dict(items)),
      {'0': bytes(40_000_000)})
  with pytest.raises(CheckpointFormatError,
                     match=r'archive/data/0 declares 40000000 bytes, but its '
                     r'tensors need 4'):
    unpickling.load_state_dict(path)
  # A storage claimed larger than the cap is refused without reading it.
  items = [('w', pth_writer.tensor('0', np.float32, (1 << 30) + 1, 0, (1,),
                                   (1,)))]
  path = pth_writer.write_zip(
      tmp_path / 'huge.pth', pth_writer.pickle(pth_writer.ordered_dict(items)),
      {'0': bytes(4)})
  with pytest.raises(UnsafeCheckpointError,
                     match=r'would hold 4294967300 bytes, over the'):
    unpickling.load_state_dict(path)


def test_a_member_inflating_past_its_declared_size_reads_only_that(tmp_path):
  """A deflated member whose stream inflates to 64 MB but whose headers
  declare 4 bytes: only 4 bytes are ever produced, then the CRC fails."""
  items = [('w', pth_writer.tensor('0', np.float32, 1, 0, (1,), (1,)))]
  path = tmp_path / 'inflating.pth'
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as archive:
    archive.writestr('archive/data.pkl',
                     pth_writer.pickle(pth_writer.ordered_dict(items)))
    archive.writestr('archive/data/0', bytes(64 << 20))
  data = bytearray(path.read_bytes())
  big = (64 << 20).to_bytes(4, 'little')
  count = data.count(big)
  assert count == 2  # Local header and central directory.
  path.write_bytes(bytes(data).replace(big, (4).to_bytes(4, 'little')))
  with pytest.raises(CheckpointFormatError, match='archive/data/0 is corrupt'):
    unpickling.load_state_dict(path)


def test_the_bytes_a_checkpoint_makes_the_loader_allocate_are_capped(
    tmp_path, monkeypatch):
  """One cap over all storages read and tensors built: many full views of
  one small storage, or a storage that inflates from a tiny zip member,
  are refused before allocating, naming the file and the numbers."""
  assert unpickling.DEFAULT_MAX_CHECKPOINT_BYTES == 2 << 30
  monkeypatch.setenv(unpickling.MAX_CHECKPOINT_BYTES_VARIABLE, '10000000')
  numel = 1_000_000  # A 4 MB storage...
  items = [(f'view{i}', pth_writer.tensor('0', np.float32, numel, 0,
                                          (numel,), (1,)))
           for i in range(5)]  # ...read as 5 full views: 24 MB in all.
  views = pth_writer.write_zip(
      tmp_path / 'views.pth', pth_writer.pickle(pth_writer.ordered_dict(items)),
      {'0': np.ones(numel, np.float32).tobytes()})
  with pytest.raises(UnsafeCheckpointError,
                     match=r'views\.pth: a tensor \(1000000,\) of storage 0 '
                     r'\(4000000 bytes\) would bring what loading it '
                     r'allocates to 12000000 bytes, over the cap of 10000000'):
    unpickling.load_state_dict(views)
  # A 64 MB storage deflated to a few KB: refused before it is inflated.
  items = [('w', pth_writer.tensor('0', np.float32, 16 << 20, 0, (16 << 20,),
                                   (1,)))]
  inflating = tmp_path / 'inflating.pth'
  with zipfile.ZipFile(inflating, 'w', zipfile.ZIP_DEFLATED) as archive:
    archive.writestr('archive/data.pkl',
                     pth_writer.pickle(pth_writer.ordered_dict(items)))
    archive.writestr('archive/data/0', bytes(64 << 20))
  assert inflating.stat().st_size < 1 << 20
  with pytest.raises(UnsafeCheckpointError,
                     match=r'storage archive/data/0 \(67108864 bytes\) would '
                     r'bring .* over the cap of 10000000'):
    unpickling.load_state_dict(inflating)
  # Under the default cap both load.
  monkeypatch.delenv(unpickling.MAX_CHECKPOINT_BYTES_VARIABLE)
  loaded = unpickling.load_state_dict(views)
  assert sorted(loaded) == [f'view{i}' for i in range(5)]
  assert unpickling.load_state_dict(inflating)['w'].nbytes == 64 << 20
