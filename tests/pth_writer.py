"""Writes PyTorch `torch.save` zip checkpoints without torch, for tests.

A minimal pickle protocol-2 writer of the opcodes `torch.save` emits for a
state_dict (an OrderedDict of `_rebuild_tensor_v2` calls on storages), so
tests can make official-layout `.pth` files of any architecture and width,
and malformed or malicious ones.
"""

import struct
import zipfile

import numpy as np


STORAGE_NAMES = {
    np.dtype(np.float32): 'FloatStorage',
    np.dtype(np.float64): 'DoubleStorage',
    np.dtype(np.float16): 'HalfStorage',
    np.dtype(np.int64): 'LongStorage',
    np.dtype(np.int32): 'IntStorage',
    np.dtype(np.uint8): 'ByteStorage',
    np.dtype(np.bool_): 'BoolStorage',
}


def global_op(module, name):
  return b'c' + f'{module}\n{name}\n'.encode()


def value(x):
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
    return b'(' + b''.join(value(v) for v in x) + b't'
  raise TypeError(x)


def call(func_ops, *args):
  """Opcodes that call the global pushed by func_ops with args (REDUCE)."""
  return func_ops + value(tuple(args)) + b'R'


def ordered_dict(items):
  ops = call(global_op('collections', 'OrderedDict'))
  if items:
    ops += b'(' + b''.join(value(k) + value(v) for k, v in items) + b'u'
  return ops


def tensor(key, dtype, numel, offset, size, stride,
            storage_module='torch', storage_name=None):
  storage_name = storage_name or STORAGE_NAMES[np.dtype(dtype)]
  pid = (b'(' + value('storage') + global_op(storage_module, storage_name)
         + value(key) + value('cpu') + value(numel) + b't' + b'Q')
  return call(global_op('torch._utils', '_rebuild_tensor_v2'), pid, offset,
               tuple(size), tuple(stride), False,
               ordered_dict([]))


def pickle(ops):
  return b'\x80\x02' + ops + b'.'


def write_zip(path, pickle_bytes, storages=None, prefix='archive',
               byteorder=None):
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr(f'{prefix}/data.pkl', pickle_bytes)
    if byteorder is not None:
      z.writestr(f'{prefix}/byteorder', byteorder)
    for key, raw in (storages or {}).items():
      z.writestr(f'{prefix}/data/{key}', raw)
    z.writestr(f'{prefix}/version', '3\n')
  return path


def write_state_dict(path, arrays, **kwargs):
  """Writes contiguous arrays as a torch.save state_dict would."""
  items, storages = [], {}
  for i, (name, a) in enumerate(arrays.items()):
    a = np.ascontiguousarray(a)
    stride = tuple(s // a.itemsize for s in a.strides)
    items.append((name, tensor(str(i), a.dtype, a.size, 0, a.shape, stride)))
    storages[str(i)] = a.tobytes()
  return write_zip(path, pickle(ordered_dict(items)), storages, **kwargs)
