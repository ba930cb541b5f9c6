"""Grouped convolutions and a large blur, formulated for XLA:CPU speed.

XLA:CPU runs convolutions with `feature_group_count > 1` (depthwise and other
grouped convs) and large single-channel kernels very slowly: they took nearly
all of a RECNet training step. This module has, for each, the straightforward
`lax.conv_general_dilated` version (`*_lax`, the reference) and a fast one
with the same results to float32 rounding, gradients included:

  - `grouped_conv_shift`: a k x k grouped conv as a sum of k*k shifted slices
    of the zero-padded input times per-channel weights, which XLA fuses into
    a few elementwise loops, with a custom VJP that is fast too;
  - `blur_fft`: a 'same' zero-padded cross-correlation with a learnable
    (non-separable) k x k kernel as an FFT convolution.

tests/test_recnet_parity.py checks them against the lax versions.
"""

import functools

import jax
import jax.numpy as jnp

_PRECISION = jax.lax.Precision.HIGHEST


def grouped_conv_lax(x: jax.Array, kernel: jax.Array, groups: int,
                     pad: int) -> jax.Array:
  """Grouped conv with zero padding `pad`, stride 1, via lax (the reference).

  Args:
    x: (N, H, W, C_in).
    kernel: (k, k, C_in / groups, C_out), HWIO as torch's OIHW transposed.
    groups: feature groups (torch `groups`).
    pad: zero padding on each side.

  Returns:
    (N, H + 2 pad - k + 1, W + 2 pad - k + 1, C_out).
  """
  return jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), (1, 1), ((pad, pad), (pad, pad)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups,
      precision=_PRECISION)


def _gather_inputs(xp: jax.Array, groups: int, per_out: int, i: int
                   ) -> jax.Array:
  """Input channel i of each output's group, one channel per output.

  xp: (N, H, W, groups * per_in) -> (N, H, W, groups * per_out), whose channel
  o = g * per_out + j is xp's channel g * per_in + i.
  """
  n, h, w, c = xp.shape
  xi = xp.reshape(n, h, w, groups, c // groups)[..., i]
  return jnp.repeat(xi, per_out, axis=-1) if per_out > 1 else xi


def _shift_sum(xp: jax.Array, kernel: jax.Array, groups: int) -> jax.Array:
  """VALID grouped cross-correlation of xp as a sum of shifted multiplies."""
  n, hp, wp, _ = xp.shape
  k, _, per_in, c_out = kernel.shape
  per_out = c_out // groups
  h_out, w_out = hp - k + 1, wp - k + 1
  out = None
  for i in range(per_in):
    xi = _gather_inputs(xp, groups, per_out, i)
    for dy in range(k):
      for dx in range(k):
        term = xi[:, dy:dy + h_out, dx:dx + w_out, :] * kernel[dy, dx, i]
        out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _grouped_conv_shift(x, kernel, groups, pad):
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return _shift_sum(xp, kernel.astype(x.dtype), groups)


def _grouped_conv_shift_fwd(x, kernel, groups, pad):
  return _grouped_conv_shift(x, kernel, groups, pad), (x, kernel)


def _grouped_conv_shift_bwd(groups, pad, residuals, g):
  """Both cotangents, written so XLA:CPU runs them fast too.

  Plain autodiff transposes each tap's slice into a pad of the full array and
  adds k*k of them, ~100x slower than the forward. Instead:
    d x: the transposed conv, itself a grouped shift-sum of g zero-padded by
      k - 1 - pad, with the kernel flipped and in / out swapped per group;
    d kernel: per tap, sum over pixels of (shifted input) * g, reduced first
      over (N, H) with (W, C) kept contiguous, then over W (a two-stage
      reduction that vectorises well; no reshape, so that the shifted slice
      fuses into the reduction instead of being copied out).
  """
  x, kernel = residuals
  _, h, w, _ = x.shape
  k, _, per_in, c_out = kernel.shape
  per_out = c_out // groups
  flipped = kernel[::-1, ::-1].astype(g.dtype)
  kernel_t = flipped.reshape(k, k, per_in, groups, per_out).transpose(
      0, 1, 4, 3, 2).reshape(k, k, per_out, groups * per_in)
  q = k - 1 - pad
  if q >= 0:
    gp = jnp.pad(g, ((0, 0), (q, q), (q, q), (0, 0)))
    dx = _shift_sum(gp, kernel_t, groups)
  else:  # Padding beyond the kernel: crop instead.
    dx = _shift_sum(g, kernel_t, groups)[:, -q:h - q, -q:w - q, :]
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  _, h_out, w_out, _ = g.shape
  products = []
  for i in range(per_in):
    xi = _gather_inputs(xp, groups, per_out, i)
    for dy in range(k):
      for dx_ in range(k):
        products.append(xi[:, dy:dy + h_out, dx_:dx_ + w_out, :] * g)
  # One variadic reduction over H for all taps: a single pass over x and g,
  # then a small sum over (N, W). Separate per-tap sums cost a pass each
  # (and XLA:CPU's library fusions copy each shifted slice out first), and
  # reducing over (N, H) at once vectorises worse: 158, 37 and 19 ms for a
  # 32-channel 5x5 depthwise conv at 8x128x128.
  zeros = tuple(jnp.zeros((), g.dtype) for _ in products)
  partial = jax.lax.reduce(
      tuple(products), zeros,
      lambda a, b: tuple(u + v for u, v in zip(a, b)), (1,))
  dkernel = jnp.stack(partial).sum(axis=(1, 2))
  dkernel = dkernel.reshape(per_in, k, k, c_out).transpose(1, 2, 0, 3)
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_grouped_conv_shift.defvjp(_grouped_conv_shift_fwd, _grouped_conv_shift_bwd)


def grouped_conv_shift(x: jax.Array, kernel: jax.Array, groups: int,
                       pad: int) -> jax.Array:
  """`grouped_conv_lax` as a sum of shifted, channel-broadcast multiplies.

  out[..., o] = sum_{i, dy, dx} xp[:, dy:dy+H', dx:dx+W', in(o, i)]
                * kernel[dy, dx, i, o],
  where xp is x zero-padded by `pad` and in(o, i) the i-th input channel of
  output o's group. For each in-group index i the input channels feeding the
  outputs are gathered once (a reshape, plus a repeat when a group has several
  outputs), then the k*k taps are slices of that array: elementwise work that
  XLA fuses, instead of XLA:CPU's slow grouped-convolution path. Meant for the
  small per-group widths of RECNet (1 or 2 inputs per group): the work grows
  with (C_in / groups) * k * k multiplies per output, as a direct conv does.
  Exact up to float32 summation order. Reverse-mode gradients come from a
  custom VJP (see `_grouped_conv_shift_bwd`), so forward-mode (jvp) is not
  available through it.
  """
  n, h, w, c_in = x.shape
  k, k2, per_in, c_out = kernel.shape
  if k != k2 or c_in != per_in * groups or c_out % groups:
    raise ValueError(f'kernel {kernel.shape} does not fit input {x.shape} '
                     f'with groups={groups}')
  return _grouped_conv_shift(x, kernel, groups, pad)


# Dense convs whose channel counts multiply to at most this run as shift sums
# on a CPU: XLA:CPU's conv is slow for so few channels (a 3x3 conv 3->1 took
# 15 ms at 540x960, 0.9 ms as a shift sum; 8->8 24 ms against 15), and
# faster from 16->16 on (13 against 41 ms at 270x960).
DENSE_SHIFT_MAX_CHANNEL_PRODUCT = 128
# ... and under differentiation only up to this (see `_dense_conv_shift_fwd`).
DENSE_SHIFT_MAX_CHANNEL_PRODUCT_UNDER_GRAD = 16


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_conv_shift(x, kernel, pad):
  # The grouped shift sum with one group; its own VJP is not used here.
  return _grouped_conv_shift(x, kernel, 1, pad)


def _dense_conv_shift_fwd(x, kernel, pad):
  """The forward pass under differentiation: the lax conv above
  `DENSE_SHIFT_MAX_CHANNEL_PRODUCT_UNDER_GRAD`.

  In a training step XLA fuses the shift sum of e.g. the dual block's 8->8
  `post_0` parts into one loop that gathers each input channel from a
  strided layout (65-72 ms per block at 8x128x128, by trace), where the lax
  conv costs less; inference keeps the shift sum, which is faster there.
  The RECNet training step's gradient, interleaved in one process: 2969 ms
  with shift sums, 2690 with this rule, 2822 with the lax conv for all.
  """
  channel_product = kernel.shape[2] * kernel.shape[3]
  if channel_product > DENSE_SHIFT_MAX_CHANNEL_PRODUCT_UNDER_GRAD:
    return grouped_conv_lax(x, kernel, 1, pad), (x, kernel)
  return _dense_conv_shift(x, kernel, pad), (x, kernel)


def _dense_conv_shift_bwd(pad, residuals, g):
  """The lax conv's own gradients: for a dense conv they beat shift sums.

  XLA:CPU's backward convolutions run these shapes well, while the kernel
  gradient as per-tap reductions (`_grouped_conv_shift_bwd`) or as dots over
  all pixels costs several times more (8->8 at 8x128x128: 10 ms against 26
  to 58).
  """
  x, kernel = residuals
  _, vjp = jax.vjp(lambda x_, k_: grouped_conv_lax(x_, k_, 1, pad), x, kernel)
  return vjp(g)


_dense_conv_shift.defvjp(_dense_conv_shift_fwd, _dense_conv_shift_bwd)


def dense_conv_shift(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
  """An ungrouped conv (`grouped_conv_lax` with groups=1) as a shift sum.

  The forward pass is `grouped_conv_shift`'s sum of k*k shifted slices per
  input channel; the gradients are the lax conv's (see
  `_dense_conv_shift_bwd`). Meant for few channels (see
  `DENSE_SHIFT_MAX_CHANNEL_PRODUCT`): the work is c_in * k * k multiplies
  per output value, vectorised over the output channels.
  """
  if kernel.shape[2] != x.shape[-1] or kernel.shape[0] != kernel.shape[1]:
    raise ValueError(f'kernel {kernel.shape} does not fit input {x.shape}')
  return _dense_conv_shift(x, kernel, pad)


def blur_lax(m: jax.Array, kernel: jax.Array) -> jax.Array:
  """Zero-padded 'same' cross-correlation of each channel of m with kernel.

  m: (N, H, W, C); kernel: (k, k), k odd; padding k // 2 (the reference).
  """
  pad = kernel.shape[0] // 2
  c = m.shape[-1]
  return jax.lax.conv_general_dilated(
      m, jnp.broadcast_to(kernel.astype(m.dtype)[:, :, None, None],
                          kernel.shape + (1, c)),
      (1, 1), ((pad, pad), (pad, pad)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c,
      precision=_PRECISION)


def _fft_size(n: int) -> int:
  """Smallest m >= n with no prime factor above 7 (fast FFT lengths)."""
  m = n
  while True:
    r = m
    for p in (2, 3, 5, 7):
      while r % p == 0:
        r //= p
    if r == 1:
      return m
    m += 1


def blur_fft(m: jax.Array, kernel: jax.Array) -> jax.Array:
  """`blur_lax` as an FFT convolution (same zero padding, same result).

  A k x k single-channel conv costs k*k (961 for RECNet's 31) multiplies per
  pixel directly, and XLA:CPU's conv is slow at this shape; the FFT costs
  O(log HW). Each channel is zero-padded to F >= H + k - 1 rows and
  G >= W + k - 1 columns (smooth FFT lengths), so the circular convolution
  with the flipped kernel equals the linear one with no wrap-around, and the
  'same' output is its window starting at (k // 2, k // 2). Differentiable in
  both m and kernel (the kernel is a learned parameter, not separable in
  general). Float32 FFT rounding is ~1e-7 relative to the largest value.
  """
  n, h, w, c = m.shape
  k = kernel.shape[0]
  pad = k // 2
  f, g = _fft_size(h + k - 1), _fft_size(w + k - 1)
  x = jnp.moveaxis(m, -1, 1)  # (N, C, H, W): FFT over the trailing axes.
  spectrum = jnp.fft.rfft2(x, s=(f, g))
  kernel_spectrum = jnp.fft.rfft2(kernel[::-1, ::-1].astype(m.dtype), s=(f, g))
  full = jnp.fft.irfft2(spectrum * kernel_spectrum, s=(f, g))
  return jnp.moveaxis(full[:, :, pad:pad + h, pad:pad + w], 1, -1)
