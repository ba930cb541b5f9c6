"""Runs the official PyTorch RECNet beside ours (used by recnet_speed.py).

The official code needs torch, torchvision, einops and scipy, which the
project's environment does not install, so it runs in a child process
(`recnet_official_torch.py`) under any interpreter that has them: the
project's own when torch was installed into it, or another one
(`--torch_python`). Inputs and weights go to it in an .npz, timings and
outputs come back in one. The two sides never run at the same time, so
neither steals the other's cores.
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


def run(torch_python: str, official_dir: str, *, images: list[np.ndarray],
        train_batch: dict[str, np.ndarray] | None, vgg_params: Any,
        loss_weights: tuple[float, ...], state_dict_path: str, nc: int,
        rounds: int, timeout_s: float = 3600) -> dict[str, np.ndarray]:
  """Times the official network (and training step) in a child process.

  Args:
    torch_python: interpreter with torch, torchvision, einops and scipy.
    official_dir: checkout of github.com/kravrolens/RECNet.
    images: NHWC float32 images to time inference on, one call each.
    train_batch: {'input', 'target'} NHWC crops for the training step, or
      None to skip it.
    vgg_params: VGG16 Flax params for EXCloss (the ones our loss uses).
    loss_weights: (pixel, ssim, mask, color, ecr).
    state_dict_path: official-layout weights for the network, or '' to keep
      torch's initialisation.
    nc: feature width.
    rounds: timed calls of each (after one warm-up call).
    timeout_s: limit for the child.

  Returns:
    The child's OUT.npz as a dict (see recnet_official_torch.py).
  """
  with tempfile.TemporaryDirectory() as tmp:
    inputs = {f'image_{i}': np.asarray(image, np.float32)
              for i, image in enumerate(images)}
    if train_batch is not None:
      inputs['train_input'] = np.asarray(train_batch['input'], np.float32)
      inputs['train_target'] = np.asarray(train_batch['target'], np.float32)
    inputs.update(vgg_torch_layout(vgg_params))
    inputs['loss_weights'] = np.asarray(loss_weights, np.float64)
    inputs['state_dict_path'] = np.asarray(state_dict_path)
    in_path, out_path = (os.path.join(tmp, 'in.npz'),
                         os.path.join(tmp, 'out.npz'))
    np.savez(in_path, **inputs)
    command = [torch_python, _HELPER, f'--official_dir={official_dir}',
               f'--inputs={in_path}', f'--output={out_path}', f'--nc={nc}',
               f'--rounds={rounds}']
    done = subprocess.run(command, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    if done.returncode:
      sys.stderr.write(done.stderr)
      raise RuntimeError(f'the official PyTorch run failed (exit '
                         f'{done.returncode}): {" ".join(command)}')
    with np.load(out_path) as out:
      return {key: out[key] for key in out.files}
