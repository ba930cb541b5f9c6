"""Runs the official PyTorch RECNet beside ours (used by recnet_speed.py).

The official code needs torch, torchvision, einops and scipy, which the
project's environment does not install, so it runs in a child process
(`recnet_official_torch.py`) under any interpreter that has them: the
project's own when torch was installed into it, or another one
(`--torch_python`). Inputs and weights go to it in an .npz; it then times
one call at a time on request (`OfficialSession.seconds`), so the caller
can alternate its rounds with the official ones and compare each pair, timed
seconds apart, on a machine whose speed drifts. The two sides never run at
the same time, so neither steals the other's cores; outputs come back in an
.npz at the end.
"""

import os
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np

_HELPER = os.path.join(os.path.dirname(__file__), 'recnet_official_torch.py')
_NEEDED = ('torch', 'torchvision', 'einops', 'scipy')


def missing_requirement(torch_python: str, official_dir: str) -> str | None:
  """Why the official code cannot run, or None when it can."""
  arch = os.path.join(official_dir, 'models', 'archs', 'EnhanceN_arch.py')
  if not os.path.isfile(arch):
    return (f'{arch} not found: --official_dir must be a checkout of '
            'github.com/kravrolens/RECNet')
  probe = subprocess.run(
      [torch_python, '-c', f'import {", ".join(_NEEDED)}'],
      capture_output=True, text=True, check=False)
  if probe.returncode:
    last = (probe.stderr.strip().splitlines() or ['?'])[-1]
    return (f'{torch_python} cannot import {", ".join(_NEEDED)} ({last}); '
            f'install them there (pip install torch torchvision einops '
            f'scipy) or pass --torch_python')
  return None


def vgg_torch_layout(vgg_params: dict[str, Any]) -> dict[str, np.ndarray]:
  """VGG16 Flax params (Conv_0.. HWIO) as `vgg_<i>` OIHW / `vgg_<i>_bias`."""
  arrays = {}
  names = sorted(vgg_params, key=lambda name: int(name.split('_')[1]))
  for i, name in enumerate(names[:10]):  # features[:23]: ten convs.
    arrays[f'vgg_{i}'] = np.asarray(
        vgg_params[name]['kernel'], np.float32).transpose(3, 2, 0, 1)
    arrays[f'vgg_{i}_bias'] = np.asarray(vgg_params[name]['bias'], np.float32)
  return arrays


class OfficialSession:
  """The official network (and training step) in a child process, timed one
  call at a time.

  Args:
    torch_python: interpreter with torch, torchvision, einops and scipy.
    official_dir: checkout of github.com/kravrolens/RECNet.
    images: NHWC float32 images to time inference on (requests `image_<i>`).
    train_batch: {'input', 'target'} NHWC crops for the training step
      (request `train`), or None to skip it.
    vgg_params: VGG16 Flax params for EXCloss (the ones our loss uses).
    loss_weights: (pixel, ssim, mask, color, ecr).
    state_dict_path: official-layout weights for the network, or '' to keep
      torch's initialisation.
    nc: feature width.
    timeout_s: limit for the child's exit once asked to quit.

  Use as a context manager: `seconds(request)` times one call, and `results`
  (after the `with` block) holds the child's OUT.npz (see
  recnet_official_torch.py).
  """

  def __init__(self, torch_python: str, official_dir: str, *,
               images: list[np.ndarray],
               train_batch: dict[str, np.ndarray] | None, vgg_params: Any,
               loss_weights: tuple[float, ...], state_dict_path: str, nc: int,
               timeout_s: float = 1800):
    self._tmp = tempfile.TemporaryDirectory()
    inputs = {f'image_{i}': np.asarray(image, np.float32)
              for i, image in enumerate(images)}
    if train_batch is not None:
      inputs['train_input'] = np.asarray(train_batch['input'], np.float32)
      inputs['train_target'] = np.asarray(train_batch['target'], np.float32)
    inputs.update(vgg_torch_layout(vgg_params))
    inputs['loss_weights'] = np.asarray(loss_weights, np.float64)
    inputs['state_dict_path'] = np.asarray(state_dict_path)
    in_path = os.path.join(self._tmp.name, 'in.npz')
    self._out_path = os.path.join(self._tmp.name, 'out.npz')
    np.savez(in_path, **inputs)
    self._command = [torch_python, _HELPER, f'--official_dir={official_dir}',
                     f'--inputs={in_path}', f'--output={self._out_path}',
                     f'--nc={nc}']
    self._timeout_s = timeout_s
    self._child = None
    self.results: dict[str, np.ndarray] = {}

  def __enter__(self) -> 'OfficialSession':
    self._stderr = tempfile.TemporaryFile(mode='w+')
    self._child = subprocess.Popen(
        self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=self._stderr, text=True)
    self._reply('ready')
    return self

  def seconds(self, request: str) -> float:
    """Times one call: `image_<i>` (inference) or `train` (one step)."""
    self._child.stdin.write(request + '\n')
    self._child.stdin.flush()
    return float(self._reply('seconds ').split()[1])

  def _reply(self, prefix: str) -> str:
    """The child's next stdout line starting with `prefix` (the official
    code may print lines of its own)."""
    while line := self._child.stdout.readline():
      if line.startswith(prefix):
        return line.strip()
    self._fail()  # The child exited.

  def _fail(self):
    self._child.kill()
    self._child.wait()
    self._stderr.seek(0)
    sys.stderr.write(self._stderr.read())
    raise RuntimeError(f'the official PyTorch run failed (exit '
                       f'{self._child.returncode}): {" ".join(self._command)}')

  def __exit__(self, *exc_info):
    try:
      if exc_info[0] is None:
        self._child.communicate('quit\n', timeout=self._timeout_s)
        if self._child.returncode:
          self._fail()
        with np.load(self._out_path) as out:
          self.results = {key: out[key] for key in out.files}
    finally:
      if self._child.poll() is None:
        self._child.kill()
        self._child.wait()
      self._stderr.close()
      self._tmp.cleanup()
