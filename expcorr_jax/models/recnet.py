"""RECNet: region-aware exposure consistency network (Liu et al., AAAI 2024).

A Flax Linen re-implementation of the official PyTorch network
(github.com/kravrolens/RECNet, `InteractNet`), written to reproduce its numbers
and to load its `state_dict`s. Everything is NHWC; params are a plain pytree
used through the functional `init` / `apply` API:

  state = unpickling.load_state_dict('recnet.pth')
  model = RECNet(**infer_config(state))           # nc=8, 5 blocks, 2 heads
  params = params_from_torch(state)
  out = model.apply({'params': params}, images)   # images (N, H, W, 3) in [0, 1]
  out.output, out.mask                            # (N, H, W, 3), (N, H, W, 1)

Structure (see ../../../shared/notes/methods.md, RECNet section):
  extract (3x3, 3->nc) -> features_pre
  mask predictor: 3 x [3x3 nc->nc, replicate padding, ReLU], 3x3 nc->1
    (replicate padding), sigmoid -> mask M (exposure mask, one channel)
  num_blocks dual blocks in sequence, each RIN -> MCSA -> fuse, residual
  1x1 merge of all block outputs -> Refine -> clamp(y + 1e-5, 0, 1)

Instance norm and channel attention are global over the image, so the network
runs at any size without tiling; the channel attention's logits are sums over
all pixels (unnormalised q and k, as in the official code), so they grow with
the image area. All convolutions and contractions run at HIGHEST precision so
that float32 parity holds on accelerators that would otherwise use TF32/bf16.

Speed. XLA:CPU runs grouped / depthwise convolutions (`feature_group_count >
1`, six per dual block), convs with few channels and the 31x31 single-channel
mask blur very slowly, and its fusion turns channel slices, concatenations
and transposes into loops that recompute their producers. With
`conv_impl='auto'` (the default) a CPU therefore computes the network
differently, with the same results to float32 rounding (~1e-7), gradients
included:
  - a grouped / depthwise k x k conv as a sum of k*k shifted slices of the
    zero-padded input times per-channel weights (`grouped_conv_shift`), which
    XLA fuses into a few elementwise loops; dense convs whose channel counts
    multiply to at most 128 the same way (`dense_conv_shift`, with the lax
    conv's gradients);
  - a conv of a channel concatenation as the sum of one conv per part
    (`Conv` given a tuple), since a fused concatenation is a per-element
    select;
  - MCSA laid out so that each large tensor is computed once
    (`recnet_mcsa.mixed_scale_attention`);
  - the mask blur as an FFT convolution with the same zero padding
    (`blur_fft`); the blur kernel is a learnable, in general non-separable,
    31x31 parameter, so a separable pair of 1-D convs would not be exact.
Other backends keep `lax.conv_general_dilated` and the literal structure
('lax'), the straightforward formulation that the CPU one is tested against
(tests/test_recnet_parity.py); benchmarks/recnet_speed.py times both against
each other and against the official PyTorch code.
"""

import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from expcorr_jax.models import recnet_mcsa
from expcorr_jax.models.recnet_conv_ops import blur_fft
from expcorr_jax.models.recnet_conv_ops import blur_lax
from expcorr_jax.models.recnet_conv_ops import DENSE_SHIFT_MAX_CHANNEL_PRODUCT
from expcorr_jax.models.recnet_conv_ops import dense_conv_shift
from expcorr_jax.models.recnet_conv_ops import grouped_conv_lax
from expcorr_jax.models.recnet_conv_ops import grouped_conv_shift

__all__ = [
    'CONV_IMPLS',
    'Conv',
    'RECNet',
    'RECNetOutput',
    'gaussian_kernel',
    'infer_config',
    'params_from_torch',
    'torch_key_layout',
]

_PRECISION = jax.lax.Precision.HIGHEST
_IN_EPS = 1e-5  # torch.nn.InstanceNorm2d default.
CONV_IMPLS = ('auto', 'fast', 'lax')


def _use_fast(conv_impl: str) -> bool:
  """Whether `conv_impl` means the shift / FFT formulations here and now.

  'auto' picks them on a CPU only: they exist because XLA:CPU's grouped and
  large single-channel convs are slow; elsewhere the library convs are kept.
  """
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl={conv_impl!r}: use one of {CONV_IMPLS}')
  if conv_impl == 'auto':
    return jax.default_backend() == 'cpu'
  return conv_impl == 'fast'


class Conv(nn.Module):
  """2-D conv with PyTorch's default init and 'same' zero padding by default.

  Params: `kernel` (k, k, in / groups, out) and, if used, `bias` (out,). Both
  are initialised U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as torch.nn.Conv2d does,
  so that training from scratch starts like the official code (Flax's default
  is LeCun normal with zero bias).

  Attributes:
    features: output channels.
    kernel_size: square kernel side.
    groups: feature groups (torch `groups`; depthwise when = in channels).
    use_bias: add a bias.
    padding: zero padding on each side; None for kernel_size // 2.
    conv_impl: 'fast' (grouped convs as `grouped_conv_shift`, dense k > 1
      convs with few channels as `dense_conv_shift`, a tuple input as one
      conv per part), 'lax' (`grouped_conv_lax` on the concatenated input)
      or 'auto' ('fast' on a CPU, 'lax' elsewhere).
  """
  features: int
  kernel_size: int
  groups: int = 1
  use_bias: bool = True
  padding: int | None = None
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    """Convolves x, or the channel concatenation of a sequence of arrays.

    Given a sequence, a CPU with the fast formulations sums one conv per part
    (kernel rows split to match) instead of concatenating: XLA:CPU fuses a
    concatenation into the conv's loop as a per-element select, several
    times slower than the conv itself.
    """
    parts = tuple(x) if isinstance(x, (list, tuple)) else (x,)
    k = self.kernel_size
    in_ch = sum(part.shape[-1] for part in parts)
    kernel, bias = _conv_params(self, in_ch, self.features, k, self.groups,
                                self.use_bias)
    pad = k // 2 if self.padding is None else self.padding
    fast = _use_fast(self.conv_impl)
    if len(parts) > 1 and (self.groups > 1 or not fast):
      parts = (jnp.concatenate(parts, axis=-1),)
    y, offset = None, 0
    for part in parts:
      c = part.shape[-1]
      term = self._conv_part(part, kernel[:, :, offset:offset + c], pad, fast)
      y, offset = term if y is None else y + term, offset + c
    if self.use_bias:
      y = y + bias.astype(y.dtype)
    return y

  def _conv_part(self, x, kernel, pad, fast):
    """One input's conv, by the fastest formulation for its shape."""
    if fast and self.groups > 1:
      return grouped_conv_shift(x, kernel, self.groups, pad)
    if (fast and self.kernel_size > 1 and x.shape[-1] * self.features
        <= DENSE_SHIFT_MAX_CHANNEL_PRODUCT):
      return dense_conv_shift(x, kernel, pad)
    return grouped_conv_lax(x, kernel, self.groups, pad)


def _conv_params(module: nn.Module, in_ch: int, features: int,
                 kernel_size: int, groups: int = 1, use_bias: bool = True
                 ) -> tuple[jax.Array, jax.Array | None]:
  """(kernel, bias or None) of a conv, created in `module` as `Conv` does.

  Both are initialised U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as
  torch.nn.Conv2d does.
  """
  if in_ch % groups or features % groups:
    raise ValueError(f'channels {in_ch}->{features} not divisible by '
                     f'groups={groups}')
  bound = 1.0 / math.sqrt(kernel_size * kernel_size * (in_ch // groups))

  def init(key, shape):
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)

  kernel = module.param('kernel', init, (kernel_size, kernel_size,
                                         in_ch // groups, features))
  bias = module.param('bias', init, (features,)) if use_bias else None
  return kernel, bias


class ConvParams(nn.Module):
  """A `Conv`'s parameters alone (same names, shapes and initialisation).

  For code that computes with the kernels itself (the CPU layout of MCSA,
  `recnet_mcsa`) while keeping the official parameter tree.
  """
  features: int
  kernel_size: int
  groups: int = 1

  @nn.compact
  def __call__(self, in_ch: int) -> tuple[jax.Array, jax.Array]:
    return _conv_params(self, in_ch, self.features, self.kernel_size,
                        self.groups)


def _conv(features: int, kernel: int, *, groups: int = 1, use_bias: bool = True,
          padding: int | None = None, conv_impl: str = 'auto',
          name: str | None = None) -> Conv:
  """Shorthand for `Conv` with keyword-only options."""
  return Conv(features, kernel, groups, use_bias, padding, conv_impl,
              name=name)


def _replicate_conv(conv: nn.Module, x: jax.Array, pad: int = 1) -> jax.Array:
  """Applies a VALID conv after edge ('replicate') padding, as torch does."""
  x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='edge')
  return conv(x)


def gaussian_kernel(size: int, std: float) -> np.ndarray:
  """Normalised 2-D Gaussian (outer product of scipy.signal's window)."""
  n = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-0.5 * (n / std) ** 2)
  k = np.outer(g, g)
  return (k / k.sum()).astype(np.float32)


def _instance_norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
  """Per-sample, per-channel norm over space; biased variance, eps 1e-5."""
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + _IN_EPS) * scale + bias


class MaskPredictor(nn.Module):
  """Exposure mask predictor (official `IlluNet`): features -> M in (0, 1)."""
  nc: int

  @nn.compact
  def __call__(self, x):
    # lax convs on a CPU too: an edge pad fused into a shift sum's taps (or
    # a shift sum computed into an edge-padded layout) runs several times
    # slower than XLA's conv (360 against ~90 ms at 540x960).
    conv = functools.partial(_conv, padding=0, conv_impl='lax')
    for i in range(3):
      x = nn.relu(_replicate_conv(conv(self.nc, 3, name=f'conv_{i}'), x))
    x = _replicate_conv(conv(1, 3, name='conv_3'), x)
    return nn.sigmoid(x)


class RegionInstanceNorm(nn.Module):
  """Mask-aware instance norm (official `RIN`), three region branches.

  Branch masks: blur(M), blur(1 - M) and 1, where blur is a 31x31 conv whose
  kernel is a learnable parameter initialised to a normalised Gaussian (std 3)
  and shared by both masks (zero padding 15). Each branch gates the masked
  features with a spatial attention map, instance-normalises them with ONE
  affine norm shared by all branches, then applies its own 3x3 conv. The two
  region outputs, each fused with the global branch, are mixed with a
  learnable scalar alpha.

  conv_impl: how the blur runs: 'fast' (`blur_fft`), 'lax' (`blur_lax`) or
  'auto' ('fast' on a CPU, 'lax' elsewhere).
  """
  nc: int
  blur_size: int = 31
  blur_std: float = 3.0
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, mask):
    kernel = self.param(
        'blur_kernel',
        lambda _, shape: jnp.asarray(gaussian_kernel(shape[0], self.blur_std)),
        (self.blur_size, self.blur_size))
    scale = self.param('norm_scale', nn.initializers.ones, (self.nc,))
    bias = self.param('norm_bias', nn.initializers.zeros, (self.nc,))
    alpha = self.param('alpha', nn.initializers.constant(0.5), ())

    if self.blur_size % 2 == 0:
      raise ValueError(f'blur_size={self.blur_size} must be odd')
    blur = blur_fft if _use_fast(self.conv_impl) else blur_lax
    # Both masks in one call: one pass over the FFT / conv machinery.
    blurred = blur(jnp.concatenate([mask, 1.0 - mask], -1), kernel)
    masks = (blurred[..., :1], blurred[..., 1:], jnp.ones_like(mask))
    conv = functools.partial(_conv, conv_impl=self.conv_impl)
    outs = []
    for i, m in enumerate(masks):
      mid = x * m
      stats = (jnp.mean(mid, -1, keepdims=True),
               jnp.max(mid, -1, keepdims=True), m)  # Concatenated.
      attention = nn.sigmoid(
          conv(1, 3, use_bias=False, name=f'attention_{i}')(stats))
      normed = _instance_norm(mid * attention, scale, bias)
      outs.append(conv(self.nc, 3, use_bias=False, name=f'tail_{i}')(normed))
    out1 = conv(self.nc, 1, name='fuse_1')((outs[0], outs[2]))
    out2 = conv(self.nc, 1, name='fuse_2')((outs[1], outs[2]))
    return (1.0 - alpha) * out1 + alpha * out2


def _channel_attention(q, k, v, temperature, num_heads):
  """Restormer-style transposed attention over channels, per head.

  q, k, v: (N, H, W, C); channel c belongs to head c // (C / num_heads) (the
  official `(head c)` split). The logits q k^T are MULTIPLIED by the per-head
  temperature; q and k are not normalised (as in the official code).
  """
  n, h, w, c = q.shape

  def heads(t):  # (N, H, W, C) -> (N, heads, C / heads, HW)
    return t.reshape(n, h * w, num_heads, c // num_heads).transpose(0, 2, 3, 1)

  q, k, v = heads(q), heads(k), heads(v)
  logits = jnp.einsum('bhcn,bhdn->bhcd', q, k, precision=_PRECISION)
  weights = jax.nn.softmax(logits * temperature[None, :, None, None], axis=-1)
  out = jnp.einsum('bhcd,bhdn->bhcn', weights, v, precision=_PRECISION)
  return out.transpose(0, 3, 1, 2).reshape(n, h, w, c)


class MixedScaleAttention(nn.Module):
  """Mixed-scale restoration unit (official `MCSA`): local and global paths.

  Local: 1x1 nc->2nc, depthwise 3x3 and 5x5 + ReLU; the first halves of both
  scales go through a grouped 3x3 conv, the second halves through a grouped
  5x5 conv (groups = nc, so each output channel mixes one channel of each
  scale), + ReLU, then a 1x1 -> out_local. Global: depthwise 3x3 / 5x5 + ReLU on
  the un-normalised block input give the values; per scale, channel attention
  with queries / keys the two halves of that scale's local activations; a 1x1
  over both results -> out_global.

  conv_impl: how the grouped convs run (see `Conv`).
  """
  nc: int
  num_heads: int = 2
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, x_feat):
    nc = self.nc
    conv = functools.partial(_conv, conv_impl=self.conv_impl)
    temperature = self.param('temperature', nn.initializers.ones,
                             (self.num_heads,))
    if _use_fast(self.conv_impl):
      shapes = {  # (features, kernel size, groups, input channels)
          'project_in': (2 * nc, 1, 1, nc),
          'local_dw3': (2 * nc, 3, 2 * nc, 2 * nc),
          'local_dw5': (2 * nc, 5, 2 * nc, 2 * nc),
          'local_mix3': (nc, 3, nc, 2 * nc),
          'local_mix5': (nc, 5, nc, 2 * nc),
          'project_out': (nc, 1, 1, 2 * nc),
          'global_dw3': (nc, 3, nc, nc),
          'global_dw5': (nc, 5, nc, nc),
          'project_global': (nc, 1, 1, 2 * nc),
      }
      weights = {name: ConvParams(f, k, g, name=name)(c)
                 for name, (f, k, g, c) in shapes.items()}
      return recnet_mcsa.mixed_scale_attention(x, x_feat, weights,
                                               temperature, self.num_heads)
    proj = conv(2 * nc, 1, name='project_in')(x)
    a3 = nn.relu(conv(2 * nc, 3, groups=2 * nc, name='local_dw3')(proj))
    a5 = nn.relu(conv(2 * nc, 5, groups=2 * nc, name='local_dw5')(proj))
    q3, k3 = a3[..., :nc], a3[..., nc:]
    q5, k5 = a5[..., :nc], a5[..., nc:]
    m1 = nn.relu(conv(nc, 3, groups=nc, name='local_mix3')(
        jnp.concatenate([q3, q5], -1)))
    m2 = nn.relu(conv(nc, 5, groups=nc, name='local_mix5')(
        jnp.concatenate([k3, k5], -1)))
    out_local = conv(nc, 1, name='project_out')(jnp.concatenate([m1, m2], -1))

    v3 = nn.relu(conv(nc, 3, groups=nc, name='global_dw3')(x_feat))
    v5 = nn.relu(conv(nc, 5, groups=nc, name='global_dw5')(x_feat))
    g3 = _channel_attention(q3, k3, v3, temperature, self.num_heads)
    g5 = _channel_attention(q5, k5, v5, temperature, self.num_heads)
    out_global = conv(nc, 1, name='project_global')(
        jnp.concatenate([g3, g5], -1))
    return out_local, out_global


class DualBlock(nn.Module):
  """RIN -> MCSA -> fuse, with a residual connection (official `DualBlock`)."""
  nc: int
  num_heads: int = 2
  blur_size: int = 31
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, mask):
    x_norm = RegionInstanceNorm(self.nc, self.blur_size,
                                conv_impl=self.conv_impl, name='rin')(x, mask)
    x_local, x_global = MixedScaleAttention(
        self.nc, self.num_heads, self.conv_impl, name='mcsa')(x_norm, x)
    conv = functools.partial(_conv, conv_impl=self.conv_impl)
    x_l = conv(self.nc, 1, name='fuse_local')((x_norm, x_local))
    x_g = conv(self.nc, 1, name='fuse_global')((x_norm, x_global))
    y = conv(self.nc, 3, name='post_0')((x_l, x_g))
    y = conv(self.nc, 3, name='post_1')(nn.leaky_relu(y, 0.1))
    return y + x


class Refine(nn.Module):
  """3x3 conv, residual channel-attention layer, 3x3 conv to RGB.

  The attention layer returns sigmoid(up(relu(down(p)))) * p + x with
  p = avgpool(conv(relu(conv(x)))): the POOLED features are rescaled and
  broadcast back (official `CALayer`), not the full-resolution ones.
  """
  nc: int
  out_channels: int = 3
  reduction: int = 4
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(_conv, conv_impl=self.conv_impl)
    x = conv(self.nc, 3, name='conv_in')(x)
    y = conv(self.nc, 3, name='ca_conv_0')(x)
    y = conv(self.nc, 3, name='ca_conv_1')(nn.relu(y))
    pooled = jnp.mean(y, axis=(1, 2), keepdims=True)
    z = nn.relu(conv(self.nc // self.reduction, 1, name='ca_down')(pooled))
    z = nn.sigmoid(conv(self.nc, 1, name='ca_up')(z))
    x = z * pooled + x
    return conv(self.out_channels, 3, name='conv_out')(x)


class RECNetOutput(NamedTuple):
  """What the network returns (all NHWC).

  output: corrected image, clamp(y + 1e-5, 0, 1), (N, H, W, 3).
  mask: exposure mask M from the predictor, (N, H, W, 1).
  features_pre: the `extract` conv output, (N, H, W, nc).
  block_features: each dual block's output, num_blocks x (N, H, W, nc).
  """
  output: jax.Array
  mask: jax.Array
  features_pre: jax.Array
  block_features: tuple[jax.Array, ...]


class RECNet(nn.Module):
  """The full network (official `InteractNet`).

  Attributes:
    nc: feature width (official default 8).
    num_blocks: number of dual blocks (official 5).
    num_heads: attention heads in each MCSA (official 2); must divide nc.
    reduction: channel reduction of Refine's attention (official 4).
    blur_size: side of the learnable Gaussian mask blur (official 31).
    conv_impl: how the grouped convs and the mask blur run: 'auto' (the
      shift / FFT formulations on a CPU, lax convs elsewhere), 'fast' or
      'lax' (see the module docstring). Results agree to ~1e-7.
  """
  nc: int = 8
  num_blocks: int = 5
  num_heads: int = 2
  reduction: int = 4
  blur_size: int = 31
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> RECNetOutput:
    """Corrects a batch of images (N, H, W, 3) in [0, 1], any H and W."""
    if self.nc % self.num_heads:
      raise ValueError(f'nc={self.nc} is not divisible by '
                       f'num_heads={self.num_heads}')
    pre = _conv(self.nc, 3, conv_impl=self.conv_impl, name='extract')(x)
    mask = MaskPredictor(self.nc, name='mask_predictor')(pre)
    feats, h = [], pre
    for i in range(self.num_blocks):
      h = DualBlock(self.nc, self.num_heads, self.blur_size, self.conv_impl,
                    name=f'block_{i + 1}')(h, mask)
      feats.append(h)
    merged = _conv(self.nc, 1, conv_impl=self.conv_impl,
                   name='merge')(tuple(feats))
    y = Refine(self.nc, 3, self.reduction, self.conv_impl,
               name='refine')(merged)
    out = jnp.clip(y + 1e-5, 0.0, 1.0)
    return RECNetOutput(out, mask, pre, tuple(feats))


# ----------------------------------------------------------------------------
# Official state_dict <-> Flax params.


def torch_key_layout(nc: int = 8, num_blocks: int = 5, num_heads: int = 2,
                     reduction: int = 4, blur_size: int = 31
                     ) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """The official state_dict layout for a configuration.

  Returns:
    torch key -> (Flax param path, torch shape). Conv weights are OIHW (with
    I = in_channels / groups) in torch and HWIO in Flax.
  """
  layout = {}

  def conv(tkey, path, out, in_per_group, k, bias=True):
    layout[f'{tkey}.weight'] = (path + ('kernel',), (out, in_per_group, k, k))
    if bias:
      layout[f'{tkey}.bias'] = (path + ('bias',), (out,))

  def single(tkey, path, shape):
    layout[tkey] = (path, shape)

  conv('extract', ('extract',), nc, 3, 3)
  for i, t in enumerate((0, 2, 4, 6)):
    conv(f'learned_mask.net_convs.{t}', ('mask_predictor', f'conv_{i}'),
         1 if i == 3 else nc, nc, 3)
  for b in range(1, num_blocks + 1):
    tb, fb = f'dualprocess.conv{b}', (f'block_{b}',)
    rin, frin = f'{tb}.norm', fb + ('rin',)
    single(f'{rin}.alpha', frin + ('alpha',), (1,))
    single(f'{rin}.IN.weight', frin + ('norm_scale',), (nc,))
    single(f'{rin}.IN.bias', frin + ('norm_bias',), (nc,))
    for j in range(3):
      conv(f'{rin}.CFR_branches.{j}', frin + (f'attention_{j}',), 1, 3, 3,
           bias=False)
      conv(f'{rin}.CFR_tails.{j}', frin + (f'tail_{j}',), nc, nc, 3,
           bias=False)
    single(f'{rin}.blur.kernel', frin + ('blur_kernel',),
           (1, 1, blur_size, blur_size))
    conv(f'{rin}.fuse_1', frin + ('fuse_1',), nc, 2 * nc, 1)
    conv(f'{rin}.fuse_2', frin + ('fuse_2',), nc, 2 * nc, 1)
    ms, fms = f'{tb}.mssa', fb + ('mcsa',)
    single(f'{ms}.temperature', fms + ('temperature',), (num_heads, 1, 1))
    conv(f'{ms}.conv3x3_q', fms + ('global_dw3',), nc, 1, 3)
    conv(f'{ms}.conv5x5_q', fms + ('global_dw5',), nc, 1, 5)
    conv(f'{ms}.project_ch', fms + ('project_global',), nc, 2 * nc, 1)
    conv(f'{ms}.project_in', fms + ('project_in',), 2 * nc, nc, 1)
    conv(f'{ms}.dwconv3x3', fms + ('local_dw3',), 2 * nc, 1, 3)
    conv(f'{ms}.dwconv5x5', fms + ('local_dw5',), 2 * nc, 1, 5)
    conv(f'{ms}.dwconv3x3_1', fms + ('local_mix3',), nc, 2, 3)
    conv(f'{ms}.dwconv5x5_1', fms + ('local_mix5',), nc, 2, 5)
    conv(f'{ms}.project_out', fms + ('project_out',), nc, 2 * nc, 1)
    conv(f'{tb}.fuse1', fb + ('fuse_local',), nc, 2 * nc, 1)
    conv(f'{tb}.fuse2', fb + ('fuse_global',), nc, 2 * nc, 1)
    conv(f'{tb}.post.0', fb + ('post_0',), nc, 2 * nc, 3)
    conv(f'{tb}.post.2', fb + ('post_1',), nc, nc, 3)
  conv('dualprocess.cat', ('merge',), nc, num_blocks * nc, 1)
  ref, fref = 'dualprocess.refine', ('refine',)
  conv(f'{ref}.conv_in', fref + ('conv_in',), nc, nc, 3)
  conv(f'{ref}.process.0.process.0', fref + ('ca_conv_0',), nc, nc, 3)
  conv(f'{ref}.process.0.process.2', fref + ('ca_conv_1',), nc, nc, 3)
  conv(f'{ref}.process.0.conv_du.0', fref + ('ca_down',), nc // reduction,
       nc, 1)
  conv(f'{ref}.process.0.conv_du.2', fref + ('ca_up',), nc, nc // reduction, 1)
  conv(f'{ref}.conv_last', fref + ('conv_out',), 3, nc, 3)
  return layout


def infer_config(state_dict: dict[str, np.ndarray]) -> dict[str, int]:
  """Reads nc, num_blocks, num_heads, reduction, blur_size off a state_dict.

  Returns keyword arguments for `RECNet(...)` and `params_from_torch`.
  """
  try:
    nc = int(state_dict['extract.weight'].shape[0])
    num_blocks = 0
    while f'dualprocess.conv{num_blocks + 1}.norm.alpha' in state_dict:
      num_blocks += 1
    num_heads = int(state_dict['dualprocess.conv1.mssa.temperature'].shape[0])
    hidden = state_dict['dualprocess.refine.process.0.conv_du.0.weight']
    blur = state_dict['dualprocess.conv1.norm.blur.kernel']
  except KeyError as e:
    raise ValueError(f'not an official RECNet state_dict: missing {e}') from e
  return dict(nc=nc, num_blocks=num_blocks, num_heads=num_heads,
              reduction=max(1, nc // int(hidden.shape[0])),
              blur_size=int(blur.shape[-1]))


def params_from_torch(state_dict: dict[str, np.ndarray], *,
                      nc: int | None = None, num_blocks: int | None = None,
                      num_heads: int | None = None, reduction: int | None = None,
                      blur_size: int | None = None) -> dict[str, Any]:
  """Converts an official RECNet state_dict into Flax params for `RECNet`.

  Configuration arguments left as None are inferred from the state_dict; given
  ones are checked against it. The conversion is strict: any missing key, any
  unexpected key, or any shape other than the configuration's raises, listing
  every problem at once, so a checkpoint of another architecture cannot load
  partially.

  Args:
    state_dict: torch key -> array (e.g. from
      `expcorr_jax.unpickling.load_state_dict`).
    nc, num_blocks, num_heads, reduction, blur_size: see `RECNet`.

  Returns:
    The params pytree (nested dicts of float32 jnp arrays); pass it as
    `RECNet(**infer_config(sd)).apply({'params': params}, x)`.

  Raises:
    ValueError: keys or shapes do not match the configuration.
  """
  config = infer_config(state_dict)
  given = dict(nc=nc, num_blocks=num_blocks, num_heads=num_heads,
               reduction=reduction, blur_size=blur_size)
  config.update({k: v for k, v in given.items() if v is not None})
  layout = torch_key_layout(**config)
  missing = sorted(set(layout) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(layout))
  wrong = [f'{k}: {tuple(np.shape(state_dict[k]))} != expected {shape}'
           for k, (_, shape) in layout.items()
           if k in state_dict and tuple(np.shape(state_dict[k])) != shape]
  if missing or unexpected or wrong:
    lines = [f'state_dict does not match RECNet({config}):']
    if missing:
      lines.append(f'  missing keys ({len(missing)}): {missing}')
    if unexpected:
      lines.append(f'  unexpected keys ({len(unexpected)}): {unexpected}')
    if wrong:
      lines.append(f'  wrong shapes ({len(wrong)}): {wrong}')
    raise ValueError('\n'.join(lines))

  params: dict[str, Any] = {}
  for key, (path, _) in layout.items():
    value = np.asarray(state_dict[key], dtype=np.float32)
    leaf = path[-1]
    if leaf == 'kernel':
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif leaf == 'blur_kernel':
      value = value[0, 0]
    elif leaf in ('alpha', 'temperature'):
      value = value.reshape(-1) if leaf == 'temperature' else value.reshape(())
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[leaf] = jnp.asarray(value)
  return params
