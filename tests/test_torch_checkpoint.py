"""Tests of the torch-free, allow-listed `.pth` reader.

Checkpoints are written by hand here (torch is not a dependency): a tiny
protocol-2 opcode writer emits the same GLOBAL / BINPERSID / REDUCE sequence
that `torch.save` produces, so the tests control every byte, including
malicious ones.
"""

import pathlib
import struct
import zipfile

import numpy as np
import pytest

from expcorr_jax import torch_checkpoint
from expcorr_jax.torch_checkpoint import CheckpointFormatError
from expcorr_jax.torch_checkpoint import UnsafeCheckpointError

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

_STORAGE_NAMES = {
    np.dtype(np.float32): 'FloatStorage',
    np.dtype(np.float64): 'DoubleStorage',
    np.dtype(np.float16): 'HalfStorage',
    np.dtype(np.int64): 'LongStorage',
    np.dtype(np.int32): 'IntStorage',
    np.dtype(np.uint8): 'ByteStorage',
    np.dtype(np.bool_): 'BoolStorage',
}


# --- A minimal pickle protocol-2 writer. -----------------------------------

def _global(module, name):
  return b'c' + f'{module}\n{name}\n'.encode()


def _value(x):
  """Opcodes that push a primitive (or a tuple of primitives / raw ops)."""
  if isinstance(x, bytes):  # Already opcodes.
    return x
  if x is None:
    return b'N'
  if isinstance(x, bool):
    return b'\x88' if x else b'\x89'
  if isinstance(x, int):
    return b'J' + struct.pack('<i', x)
  if isinstance(x, str):
    data = x.encode()
    return b'X' + struct.pack('<I', len(data)) + data
  if isinstance(x, tuple):
    return b'(' + b''.join(_value(v) for v in x) + b't'
  raise TypeError(x)


def _call(func_ops, *args):
  """Opcodes that call the global pushed by func_ops with args (REDUCE)."""
  return func_ops + _value(tuple(args)) + b'R'


def _ordered_dict(items):
  ops = _call(_global('collections', 'OrderedDict'))
  if items:
    ops += b'(' + b''.join(_value(k) + _value(v) for k, v in items) + b'u'
  return ops


def _tensor(key, dtype, numel, offset, size, stride,
            storage_module='torch', storage_name=None):
  storage_name = storage_name or _STORAGE_NAMES[np.dtype(dtype)]
  pid = (b'(' + _value('storage') + _global(storage_module, storage_name)
         + _value(key) + _value('cpu') + _value(numel) + b't' + b'Q')
  return _call(_global('torch._utils', '_rebuild_tensor_v2'), pid, offset,
               tuple(size), tuple(stride), False,
               _ordered_dict([]))


def _pickle(ops):
  return b'\x80\x02' + ops + b'.'


def _write_zip(path, pickle_bytes, storages=None, prefix='archive',
               byteorder=None):
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr(f'{prefix}/data.pkl', pickle_bytes)
    if byteorder is not None:
      z.writestr(f'{prefix}/byteorder', byteorder)
    for key, raw in (storages or {}).items():
      z.writestr(f'{prefix}/data/{key}', raw)
    z.writestr(f'{prefix}/version', '3\n')
  return path


def _write_state_dict(path, arrays, **kwargs):
  """Writes contiguous arrays as a torch.save state_dict would."""
  items, storages = [], {}
  for i, (name, a) in enumerate(arrays.items()):
    a = np.ascontiguousarray(a)
    stride = tuple(s // a.itemsize for s in a.strides)
    items.append((name, _tensor(str(i), a.dtype, a.size, 0, a.shape, stride)))
    storages[str(i)] = a.tobytes()
  return _write_zip(path, _pickle(_ordered_dict(items)), storages, **kwargs)


# --- Real checkpoints. ------------------------------------------------------

@pytest.mark.parametrize('name', ['exposure-errors.pth', 'radiometry.pth'])
def test_official_uec_checkpoints(shared_fixture, name):
  state = torch_checkpoint.load_state_dict(shared_fixture(f'uec/{name}'))
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
  path = _write_state_dict(tmp_path / 'm.pth', arrays)
  state = torch_checkpoint.load_state_dict(path)
  assert list(state) == list(arrays)
  for name, a in arrays.items():
    assert state[name].dtype == a.dtype, name
    np.testing.assert_array_equal(state[name], a)


def test_non_contiguous_and_shared_storage(tmp_path):
  base = np.arange(12, dtype=np.float32).reshape(3, 4)
  items = [
      # base.T: size (4, 3), stride (1, 4) over the same storage.
      ('t', _tensor('0', np.float32, 12, 0, (4, 3), (1, 4))),
      ('base', _tensor('0', np.float32, 12, 0, (3, 4), (4, 1))),
      # base[1:, 1::2]: offset 5, size (2, 2), stride (4, 2).
      ('view', _tensor('0', np.float32, 12, 5, (2, 2), (4, 2))),
      # A broadcast (stride 0) row.
      ('bcast', _tensor('0', np.float32, 12, 4, (2, 4), (0, 1))),
  ]
  path = _write_zip(tmp_path / 'v.pth', _pickle(_ordered_dict(items)),
                    {'0': base.tobytes()})
  state = torch_checkpoint.load_state_dict(path)
  np.testing.assert_array_equal(state['t'], base.T)
  np.testing.assert_array_equal(state['base'], base)
  np.testing.assert_array_equal(state['view'], base[1:, 1::2])
  np.testing.assert_array_equal(state['bcast'], np.stack([base[1]] * 2))
  assert state['t'].flags.c_contiguous and state['t'].flags.writeable
  state['t'][0, 0] = -1  # A copy: must not alias the other tensors.
  assert state['base'][0, 0] == 0


def test_out_of_bounds_view_is_refused(tmp_path):
  items = [('x', _tensor('0', np.float32, 4, 2, (2, 2), (2, 1)))]
  path = _write_zip(tmp_path / 'oob.pth', _pickle(_ordered_dict(items)),
                    {'0': np.zeros(4, np.float32).tobytes()})
  with pytest.raises(CheckpointFormatError, match='reads element 5'):
    torch_checkpoint.load_state_dict(path)


def test_big_endian_byteorder_and_untyped_storage(tmp_path):
  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  items = [('a', _tensor('0', np.float32, 6, 0, (2, 3), (3, 1))),
           ('u', _tensor('1', np.uint8, 3, 0, (3,), (1,),
                         storage_module='torch.storage',
                         storage_name='UntypedStorage'))]
  path = _write_zip(tmp_path / 'be.pth', _pickle(_ordered_dict(items)),
                    {'0': a.astype('>f4').tobytes(), '1': b'\x01\x02\x03'},
                    byteorder='big')
  state = torch_checkpoint.load_state_dict(path)
  np.testing.assert_array_equal(state['a'], a)
  assert state['a'].dtype == np.float32 and state['a'].dtype.isnative
  np.testing.assert_array_equal(state['u'], [1, 2, 3])


def test_unwraps_state_dict_module_prefix_and_parameters(tmp_path):
  w = np.ones((2, 2), np.float32)
  param = _call(_global('torch._utils', '_rebuild_parameter'),
                _tensor('0', np.float32, 4, 0, (2, 2), (2, 1)), True,
                _ordered_dict([]))
  inner = _ordered_dict([('module.fc.weight', param)])
  top = (b'}' + _value('epoch') + _value(7) + b's'
         + _value('state_dict') + inner + b's')
  path = _write_zip(tmp_path / 'wrapped.pth', _pickle(top), {'0': w.tobytes()},
                    prefix='wrapped')
  state = torch_checkpoint.load_state_dict(path)
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
  payload = _call(_global(module, name), command)
  # Hide the payload behind a valid tensor, as a value of the state_dict.
  items = [('ok', _tensor('0', np.float32, 1, 0, (1,), (1,))),
           ('evil', payload)]
  path = _write_zip(tmp_path / 'evil.pth', _pickle(_ordered_dict(items)),
                    {'0': np.zeros(1, np.float32).tobytes()})
  with pytest.raises(UnsafeCheckpointError,
                     match=f'references global {module}.{name}, refusing'):
    torch_checkpoint.load_state_dict(path)
  assert not marker.exists()


def test_malicious_storage_type_is_refused(tmp_path):
  marker = tmp_path / 'pwned'
  items = [('x', _tensor('0', np.float32, 1, 0, (1,), (1,),
                         storage_module='os', storage_name='system'))]
  path = _write_zip(tmp_path / 'evil.pth', _pickle(_ordered_dict(items)),
                    {'0': np.zeros(1, np.float32).tobytes()})
  with pytest.raises(UnsafeCheckpointError, match='os.system'):
    torch_checkpoint.load_state_dict(path)
  assert not marker.exists()


def test_non_zip_files(tmp_path):
  text = tmp_path / 'notes.pth'
  text.write_text('hello')
  with pytest.raises(CheckpointFormatError, match='not a PyTorch zip'):
    torch_checkpoint.load_state_dict(text)
  legacy = tmp_path / 'legacy.pth'
  # Legacy files open with a pickled LONG1 magic number, then more pickles.
  legacy.write_bytes(_pickle(b'\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19'))
  with pytest.raises(CheckpointFormatError, match='legacy .*unsupported'):
    torch_checkpoint.load_state_dict(legacy)
  other_zip = tmp_path / 'other.zip'
  with zipfile.ZipFile(other_zip, 'w') as z:
    z.writestr('readme.txt', 'x')
  with pytest.raises(CheckpointFormatError, match='not a torch.save'):
    torch_checkpoint.load_state_dict(other_zip)


def test_missing_file_and_missing_storage(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    torch_checkpoint.load_state_dict(tmp_path / 'absent.pth')
  items = [('x', _tensor('0', np.float32, 1, 0, (1,), (1,)))]
  path = _write_zip(tmp_path / 'nostorage.pth', _pickle(_ordered_dict(items)))
  with pytest.raises(CheckpointFormatError, match='missing from the archive'):
    torch_checkpoint.load_state_dict(path)


def test_non_tensor_content_is_refused(tmp_path):
  path = _write_zip(tmp_path / 'list.pth', _pickle(b']'))
  with pytest.raises(CheckpointFormatError, match='not a state_dict'):
    torch_checkpoint.load_state_dict(pathlib.Path(path))


@pytest.mark.parametrize('variant', ['inst', 'stack_global', 'newobj'])
def test_other_global_opcodes_are_refused(tmp_path, variant):
  marker = tmp_path / 'pwned'
  command = _value(f'touch {marker}')
  if variant == 'inst':  # INST: MARK args INST module\nname\n
    ops = b'(' + command + b'ios\nsystem\n'
  elif variant == 'stack_global':  # Protocol 4: names from the stack.
    ops = _value('os') + _value('system') + b'\x93' + b'(' + command + b'tR'
  else:  # NEWOBJ on a refused class.
    ops = _global('subprocess', 'Popen') + b'(' + command + b't\x81'
  path = _write_zip(tmp_path / 'evil.pth', b'\x80\x04' + ops + b'.')
  with pytest.raises(UnsafeCheckpointError, match='refusing to load'):
    torch_checkpoint.load_state_dict(path)
  assert not marker.exists()
