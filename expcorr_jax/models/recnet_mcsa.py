"""RECNet's mixed-scale attention (MCSA), laid out for XLA:CPU speed.

`recnet.MixedScaleAttention` computes, with lax convolutions, exactly what the
official `MCSA` does: a 1x1 projection to 2 nc channels, depthwise 3x3 and
5x5 convs, two grouped "mix" convs over channel pairs of both scales, and a
channel attention per scale whose queries and keys are channel halves of the
depthwise outputs. Written that way for XLA:CPU, nearly all of a RECNet
forward pass went to this unit: channel slices, concatenations and the
attention's (head, channel, pixel) transposes became fusions that recomputed
the depthwise convs once per consumer, in loops that do not vectorise.

`mixed_scale_attention` computes the same function from the same
parameters, arranged so that every large tensor is produced once, by one
fusion that vectorises over contiguous channels:

  - One projection makes 4 nc channels, in the order the mix convs consume
    them: [X0, Y0, X1, Y1], where X_i[g] is the i-th input of mix-3x3 group g
    (a query channel of scale 3 or 5) and Y_i[g] that of mix-5x5 group g (a
    key channel). One depthwise 5x5 conv over all 4 nc channels computes both
    scales (the 3x3 kernels zero-padded to 5x5); its output A is padded once
    and read by the mix conv and by the attention.
  - Both mix convs are one depthwise 5x5 conv over A; the pair partners
    (X0[g], X1[g]) and (Y0[g], Y1[g]) lie in A's two halves, which are then
    added.
  - The attention's logits q k^T of both scales and all heads come from one
    Gram matrix A^T A over pixels (the cross-head entries are masked out of
    the softmax); its output softmax(q k^T) v is linear in v, so the softmax
    weights and the 1x1 `project_global` fold into one (2 nc -> nc) kernel
    applied to the two value convs' outputs, which one depthwise conv
    computes over two copies of the block input.

Results equal the lax formulation up to float32 summation order (tests:
tests/test_recnet_parity.py, official fixtures and the lax path, gradients
included).
"""

import jax
import jax.numpy as jnp
import numpy as np

from expcorr_jax.models.recnet_conv_ops import grouped_conv_shift

_PRECISION = jax.lax.Precision.HIGHEST

def _opaque_zero_pad(x: jax.Array, pad: int) -> jax.Array:
  """x zero-padded by `pad` on H and W, written so XLA keeps it one array.

  A plain pad would do the same, but XLA simplifies the conv tap that reads
  the unpadded window of it back to x itself, and then fuses x's producer
  (here a whole depthwise conv) into the consumer a second time. Selecting
  the interior with an iota mask (the same values) keeps every tap a slice
  of one materialised array.
  """
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rows = jax.lax.broadcasted_iota(jnp.int32, padded.shape[1:3], 0)
  cols = jax.lax.broadcasted_iota(jnp.int32, padded.shape[1:3], 1)
  inside = ((rows >= pad) & (rows < padded.shape[1] - pad) &
            (cols >= pad) & (cols < padded.shape[2] - pad))
  return jnp.where(inside[None, :, :, None], padded, 0.0)


def _to_5x5(kernel: jax.Array) -> jax.Array:
  """A 3x3 (or 5x5) HWIO kernel as 5x5, zero-padded around its centre."""
  pad = (5 - kernel.shape[0]) // 2
  return jnp.pad(kernel, ((pad, pad), (pad, pad), (0, 0), (0, 0)))


def _channel_plan(nc: int):
  """Where each channel of the 4 nc-channel activation A comes from.

  Returns:
    (source, is_scale3, query_position, key_position): for channel a of A,
    the projection channel it depthwise-convolves and whether with the 3x3
    (else the 5x5) kernel; for the concatenated queries Q = [q3, q5] and
    keys K = [k3, k5] (2 nc each), the channel of A holding each.
  """
  # Q[j] is query channel j of [q3, q5]: a3 (3x3) channel j for j < nc, else
  # a5 (5x5) channel j - nc; a3 and a5 both convolve projection channel j
  # mod nc. K[j] likewise from the second halves (projection nc + j mod nc).
  q_source = [(j % nc, j < nc) for j in range(2 * nc)]
  k_source = [(nc + j % nc, j < nc) for j in range(2 * nc)]
  # X_i[g] = Q[2g + i] at position i * nc + g; Y_i[g] = K[2g + i] likewise.
  # A = [X0, Y0, X1, Y1]: the pair partners X0[g], X1[g] (and Y0[g], Y1[g])
  # are 2 nc channels apart, so the pair sums add A's two halves.
  plan = []
  for i in (0, 1):
    plan += [q_source[2 * g + i] for g in range(nc)]
    plan += [k_source[2 * g + i] for g in range(nc)]
  source = np.array([s for s, _ in plan])
  is_scale3 = np.array([three for _, three in plan])
  # Query j = 2 g + i sits at channel 2 nc i + g, key j at 2 nc i + nc + g.
  j = np.arange(2 * nc)
  query_position = 2 * nc * (j % 2) + j // 2
  return source, is_scale3, query_position, query_position + nc


def mixed_scale_attention(x: jax.Array, x_feat: jax.Array,
                          weights: dict[str, tuple[jax.Array, jax.Array]],
                          temperature: jax.Array, num_heads: int
                          ) -> tuple[jax.Array, jax.Array]:
  """(out_local, out_global) of MCSA on NHWC x (normed) and x_feat (input).

  Args:
    x: the RIN output, (N, H, W, nc).
    x_feat: the block input, (N, H, W, nc).
    weights: MCSA conv name, as `recnet.MixedScaleAttention` names its
      convs (project_in, local_dw3, ...) -> (HWIO kernel, bias), in the
      official shapes.
    temperature: (num_heads,) logit multipliers.
    num_heads: attention heads; must divide nc.

  Returns:
    (out_local, out_global), each (N, H, W, nc).
  """
  n, h, w, nc = x.shape
  per_head = nc // num_heads
  source, is_scale3, q_pos, k_pos = _channel_plan(nc)
  dot = lambda a, b: jnp.dot(a, b, precision=_PRECISION)

  # Projection and both depthwise scales, 4 nc channels in mix order.
  k_in, b_in = weights['project_in']
  projected = dot(x, k_in[0, 0][:, source]) + b_in[source]
  (k3, b3), (k5, b5) = weights['local_dw3'], weights['local_dw5']
  depthwise = jnp.where(is_scale3, _to_5x5(k3)[..., source],
                        k5[..., source])
  bias = jnp.where(is_scale3, b3[source], b5[source])
  activations = jax.nn.relu(
      grouped_conv_shift(projected, depthwise, 4 * nc, 2) + bias)
  padded = _opaque_zero_pad(activations, 2)

  # Local path: both mix convs as one depthwise conv, then pair sums.
  (km3, bm3), (km5, bm5) = weights['local_mix3'], weights['local_mix5']
  km3 = _to_5x5(km3)  # (5, 5, 2, nc): input i of group g at [:, :, i, g].
  mix_kernel = jnp.concatenate([km3[:, :, :1], km5[:, :, :1],
                                km3[:, :, 1:], km5[:, :, 1:]], axis=-1)
  mixed = grouped_conv_shift(padded, mix_kernel, 4 * nc, 0)
  mixed = mixed[..., :2 * nc] + mixed[..., 2 * nc:]
  mixed = jax.nn.relu(mixed + jnp.concatenate([bm3, bm5]))
  k_out, b_out = weights['project_out']
  out_local = dot(mixed, k_out[0, 0]) + b_out

  # Global path: logits of both scales from one Gram matrix over pixels.
  flat = padded.reshape(n, -1, 4 * nc)  # Zero padding adds nothing.
  gram = jnp.einsum('npa,npb->nab', flat, flat, precision=_PRECISION)
  head = np.arange(nc) // per_head
  same_head = head[:, None] == head[None, :]
  scale = jnp.repeat(temperature, per_head)[:, None]
  (kg3, bg3), (kg5, bg5) = weights['global_dw3'], weights['global_dw5']
  k_global, b_global = weights['project_global']
  folded = []
  for s in (0, 1):  # Scale 3, then 5: Q / K channels s * nc + c.
    index = s * nc + np.arange(nc)
    logits = gram[:, q_pos[index]][:, :, k_pos[index]] * scale
    attention = jax.nn.softmax(
        jnp.where(same_head, logits, -jnp.inf), axis=-1)  # (N, c, d)
    # out_global = sum_s (v_s @ attention_s^T) @ k_global[s-th half].
    folded.append(jnp.einsum('ncd,co->ndo', attention,
                             k_global[0, 0][s * nc:(s + 1) * nc],
                             precision=_PRECISION))
  # Values of both scales, [v3, v5]: one depthwise conv over two copies of
  # x_feat (made by a matmul with identity blocks, which adds only zeros;
  # a channel repeat inside the conv's loop would cost twice as much).
  copies = jnp.concatenate([jnp.eye(nc, dtype=x.dtype)] * 2, axis=1)
  value_kernel = jnp.concatenate([_to_5x5(kg3), kg5], axis=-1)
  values = jax.nn.relu(
      grouped_conv_shift(dot(x_feat, copies), value_kernel, 2 * nc, 2) +
      jnp.concatenate([bg3, bg5]))
  kernel = jnp.concatenate(folded, axis=1)  # (N, 2 nc: [v3, v5], nc)
  out_global = jnp.einsum('nhwd,ndo->nhwo', values, kernel,
                          precision=_PRECISION) + b_global
  return out_local, out_global
