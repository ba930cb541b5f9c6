"""ERL's batch-correlation module (BCM), from "Learning Sample Relationship
for Exposure Correction" (Huang et al., CVPR 2023). No official code exists;
this follows the paper's Sec. 3.2-3.3:

  F  = f_e(I)                       CNN encoder, full resolution, C channels
  T  = flatten(resize(F, 16x16))    one token of C' = 16 * 16 * C per image
  F' = t_e(T)                       transformer over the BATCH axis: the B
                                    tokens of a mini-batch attend to each other
  I' = f_d(W(cat([F, resize(F', HxW)])))   W a 1x1 conv (stage 2's pretext)

Stage 1 trains f_e, f_d as an auto-encoder (I ~ f_d(f_e(I))); stage 2 freezes
them and trains t_e with the Fourier-phase loss `phase_loss(I, I')` (W stays
at its start, as the paper's "only the transformer encoder t_e is trained";
`tasks/erl_bcm.py` can train W too, this project's variant);
stage 3 adds `regulariser(bcm_params, output, target)` =
L1(t_e(f_e(output)), t_e(f_e(target))) to any corrector's loss (the BCM's
shape is read off its params, so the frozen params are all it needs).

Choices the paper leaves open (see also configs/erl_*.py):
- f_e: `encoder_layers` 3x3 convs to C channels, ReLU between them, no
  activation after the last; f_d: `decoder_layers` 3x3 convs, C, ..., C, 3,
  ReLU between, linear output. No downsampling: the paper's F is B x C x H x W.
- t_e (this project's choices; the paper only says "transformer encoder"):
  pre-LayerNorm layers (ViT style, the paper's [7]) with GELU and a final
  LayerNorm, no positional embedding (the batch has no order), no dropout;
  one layer, 4 heads, MLP width C'. BatchFormer's layer (the paper's [11])
  differs: post-LN, ReLU, dropout 0.5.
- The 16x16 resize is antialiased bilinear (a low-pass, as the paper wants the
  content filtered out); the way back to HxW is bilinear.
- W's start (`fusion_init`, this project's choice; the paper is silent):
  'features_and_relationship' (default) is the identity on F's channels AND
  on F''s, so I' = f_d(F + resize(F')) depends on F' from the first step,
  which matters when W is frozen (the paper trains "only the transformer
  encoder t_e" in stage 2, so W's start is permanent); 'features_only' is
  the identity on F and zero on F' (stage 2 then starts from stage 1's
  reconstruction, and t_e gets no gradient until W's F' half grows).

`mode='per_sample'` runs t_e on each sample alone (a sequence of one, so
attention is the identity mix): the same network with no relationship
between samples. It is the control arm of the ERL experiment (README), not
a mode of the paper.

The attention over the batch axis under data parallelism: `mode='global'`
lets the tokens of the whole (global) batch attend to each other (under jit
with a sharded batch XLA gathers the tokens); `mode='per_device'` runs t_e in
`jax.shard_map` over the mesh's 'data' axis, so each device's sub-batch
attends only within itself. The mesh is the one given, else the context mesh
(`jax.set_mesh`), else the one the batch is sharded over (an array's type
carries its mesh under jit); a batch on no mesh lives on one device, where
both modes agree.

Images are NHWC float32 in [0, 1].
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
P = jax.sharding.PartitionSpec

BATCH_ATTENTION_MODES = ('global', 'per_device', 'per_sample')
DATA_AXIS = 'data'


class ConvStack(nn.Module):
  """3x3 convs with ReLU between them (none after the last)."""
  channels: tuple[int, ...]

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for i, channels in enumerate(self.channels):
      if i:
        x = nn.relu(x)
      x = nn.Conv(channels, (3, 3), padding='SAME')(x)
    return x


class BatchTransformer(nn.Module):
  """t_e: a transformer encoder whose sequence axis is the batch.

  Takes tokens (B, D) and returns (B, D); token b's output depends on every
  token of the batch, and permuting the batch permutes the output.
  """
  num_layers: int
  num_heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, tokens: Array) -> Array:
    dim = tokens.shape[-1]
    x = tokens[None]  # One sequence whose B elements are the samples.
    for _ in range(self.num_layers):
      y = nn.LayerNorm()(x)
      x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(y, y)
      hidden = nn.Dense(self.mlp_dim)(nn.LayerNorm()(x))  # Dense_{2i}.
      x = x + nn.Dense(dim)(nn.gelu(hidden))
    return nn.LayerNorm()(x)[0]


FUSION_INITS = ('features_and_relationship', 'features_only')


def _fusion_init(mode: str):
  """1x1 kernel (1, 1, 2C, C) initialiser of W (see the module docstring)."""
  if mode not in FUSION_INITS:
    raise ValueError(f'Unknown fusion_init {mode!r}; choose from '
                     f'{FUSION_INITS}.')

  def init(key, shape, dtype=jnp.float32):
    del key
    channels = shape[-1]
    eye = jnp.eye(channels, dtype=dtype)
    kernel = jnp.zeros(shape, dtype).at[0, 0, :channels, :].set(eye)
    if mode == 'features_and_relationship':
      kernel = kernel.at[0, 0, channels:, :].set(eye)
    return kernel
  return init


def resize(images: Array, height: int, width: int) -> Array:
  """Bilinear NHWC resize, antialiased when shrinking."""
  shape = (images.shape[0], height, width, images.shape[-1])
  return jax.image.resize(images, shape, 'linear', antialias=True)


class BCM(nn.Module):
  """f_e, f_d, t_e and the 1x1 fusion W; see the module docstring.

  Parameters live in four groups, 'encoder', 'decoder' (stage 1),
  'transformer' and 'fusion' (stage 2); each method touches only its own, so
  `init` with a method creates just those groups.

  Attributes:
    features: C, the channels of F.
    encoder_layers: 3x3 convs in f_e.
    decoder_layers: 3x3 convs in f_d.
    token_size: F is resized to token_size x token_size (the paper's 16).
    transformer_layers: layers of t_e.
    num_heads: attention heads of t_e; must divide C' = token_size^2 * C.
    mlp_dim: hidden width of t_e's MLPs; None means C'.
    fusion_init: how W starts (`FUSION_INITS`; only `init` reads it).
  """
  features: int = 8
  encoder_layers: int = 3
  decoder_layers: int = 3
  token_size: int = 16
  transformer_layers: int = 1
  num_heads: int = 4
  mlp_dim: int | None = None
  fusion_init: str = 'features_and_relationship'

  @property
  def token_dim(self) -> int:
    return self.token_size**2 * self.features

  def setup(self):
    self.encoder = ConvStack((self.features,) * self.encoder_layers)
    self.decoder = ConvStack((self.features,) * (self.decoder_layers - 1) +
                             (3,))
    self.transformer = BatchTransformer(
        self.transformer_layers, self.num_heads,
        self.mlp_dim or self.token_dim)
    self.fusion = nn.Conv(self.features, (1, 1),
                          kernel_init=_fusion_init(self.fusion_init))

  def __call__(self, images: Array) -> Array:
    """I' in global mode (the whole stage-2 forward in one call)."""
    features = self.encode(images)
    return self.fuse_and_decode(features,
                                self.correlate(self.tokens(features)))

  def encode(self, images: Array) -> Array:
    """f_e: (B, H, W, 3) -> F (B, H, W, C)."""
    return self.encoder(images)

  def decode(self, features: Array) -> Array:
    """f_d: (B, H, W, C) -> images (B, H, W, 3), not clipped."""
    return self.decoder(features)

  def reconstruct(self, images: Array) -> Array:
    """Stage 1's auto-encoder: f_d(f_e(I))."""
    return self.decode(self.encode(images))

  def tokens(self, features: Array) -> Array:
    """F (B, H, W, C) -> (B, C'): resized to token_size^2, flattened."""
    small = resize(features, self.token_size, self.token_size)
    return small.reshape(small.shape[0], -1)

  def correlate(self, tokens: Array) -> Array:
    """t_e over the batch axis: (B, C') -> F' (B, C')."""
    return self.transformer(tokens)

  def fuse_and_decode(self, features: Array, correlated: Array) -> Array:
    """I' = f_d(W(cat([F, resize(F')]))), F' reshaped to a feature map."""
    batch, height, width, channels = features.shape
    grid = correlated.reshape(batch, self.token_size, self.token_size,
                              channels)
    fused = self.fusion(jnp.concatenate(
        [features, resize(grid, height, width)], axis=-1))
    return self.decode(fused)


def data_mesh(x: Array, mesh: Any = None) -> Any:
  """The mesh a batch is laid out on, or None when it is on no mesh.

  In order: `mesh` if given, the context mesh (`jax.set_mesh`), the mesh in
  `x`'s type (arrays sharded with a NamedSharding carry it, also under jit
  and for values computed from them).
  """
  if mesh is not None:
    return mesh
  context = jax.sharding.get_abstract_mesh()
  if not context.empty:
    return context
  found = getattr(getattr(jax.typeof(x), 'sharding', None), 'mesh', None)
  if found is None or found.empty:
    return None
  return found


def model_from_params(params: Any) -> BCM:
  """The BCM whose params these are (shapes are static, also under jit).

  Needs 'encoder' and 'transformer'; without 'decoder' (stage 3 drops it),
  decoder_layers keeps its default, which nothing then uses.
  """
  encoder = params['encoder']
  transformer = params['transformer']
  features = encoder[f'Conv_{len(encoder) - 1}']['kernel'].shape[-1]
  token_dim, mlp_dim = transformer['Dense_0']['kernel'].shape
  fields = dict(
      features=features, encoder_layers=len(encoder),
      token_size=round((token_dim // features)**0.5),
      transformer_layers=sum(k.startswith('MultiHeadDotProductAttention_')
                             for k in transformer),
      num_heads=transformer['MultiHeadDotProductAttention_0']['query'][
          'kernel'].shape[1],
      mlp_dim=None if mlp_dim == token_dim else mlp_dim)
  if 'decoder' in params:
    fields['decoder_layers'] = len(params['decoder'])
  return BCM(**fields)


def correlate(model: BCM, params: Any, tokens: Array, *,
              mode: str = 'global', mesh: Any = None) -> Array:
  """t_e(tokens) with the batch attention of `mode`.

  Args:
    model: the BCM.
    params: BCM params holding at least 'transformer'.
    tokens: (B, C') tokens; in 'per_device' mode B must divide evenly over
      the mesh's 'data' axis.
    mode: 'global' (all B tokens attend to each other), 'per_device' (each
      device's sub-batch attends within itself) or 'per_sample' (each token
      alone: no relationship, the control).
    mesh: the device mesh (with a 'data' axis); None finds it as `data_mesh`
      does. A batch on no mesh is on one device: both modes agree.

  Returns:
    F' (B, C').
  """
  if mode not in BATCH_ATTENTION_MODES:
    raise ValueError(f'Unknown batch attention mode {mode!r}; choose from '
                     f'{BATCH_ATTENTION_MODES}.')
  apply = lambda p, t: model.apply({'params': p}, t, method=BCM.correlate)
  if mode == 'per_sample':
    return jax.vmap(lambda token: apply(params, token[None])[0])(tokens)
  mesh = data_mesh(tokens, mesh) if mode == 'per_device' else None
  if mesh is None:
    return apply(params, tokens)
  if DATA_AXIS not in mesh.axis_names:
    raise ValueError(f"per_device batch attention needs a mesh axis "
                     f"'{DATA_AXIS}'; the mesh has {mesh.axis_names}.")
  return jax.shard_map(apply, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                       out_specs=P(DATA_AXIS))(params, tokens)


def relationship_features(params: Any, images: Array, *, mode: str = 'global',
                          mesh: Any = None, model: BCM | None = None
                          ) -> Array:
  """F' = t_e(f_e(I)) (B, C'): the sample-relationship representation.

  Args:
    params: BCM params holding at least 'encoder' and 'transformer'.
    images: (B, H, W, 3) in [0, 1].
    mode, mesh: as `correlate`.
    model: the BCM; None derives it from the params' shapes.
  """
  model = model or model_from_params(params)
  tokens = model.apply({'params': params}, images,
                       method=lambda m, x: m.tokens(m.encode(x)))
  return correlate(model, params, tokens, mode=mode, mesh=mesh)


def cross_sample_shift(outputs_of: Any, images: Array,
                       outputs: Array | None = None) -> Array:
  """How much the other samples' outputs move when sample 0 is replaced.

  mean over samples j >= 1 of mean |out_j - out_j'|, where out' is computed
  on the batch with image 0 replaced by its negative (1 - image): zero for
  anything that treats samples independently (a per-pixel corrector, the
  'per_sample' control, one image per batch), and for t_e it measures how
  much the batch relationship actually mixes samples.

  Args:
    outputs_of: images (B, H, W, 3) -> per-sample outputs (B, ...).
    images: (B, H, W, 3) in [0, 1], B >= 2.
    outputs: `outputs_of(images)` if already computed.
  """
  images = jax.lax.stop_gradient(images)
  if outputs is None:
    outputs = outputs_of(images)
  replaced = images.at[0].set(1.0 - images[0])
  moved = jnp.abs(jax.lax.stop_gradient(outputs) - outputs_of(replaced))[1:]
  return jax.lax.stop_gradient(jnp.mean(moved))


def bcm_reconstruct(model: BCM, params: Any, images: Array, *,
                    mode: str = 'global', mesh: Any = None) -> Array:
  """Stage 2's I' = f_d(W(cat([F, resize(F')]))) with F' = t_e(f_e(I))."""
  features = model.apply({'params': params}, images, method=BCM.encode)
  tokens = model.apply({'params': params}, features, method=BCM.tokens)
  correlated = correlate(model, params, tokens, mode=mode, mesh=mesh)
  return model.apply({'params': params}, features, correlated,
                     method=BCM.fuse_and_decode)


def regulariser(params: Any, output: Array, target: Array, *,
                mode: str = 'global', mesh: Any = None,
                model: BCM | None = None) -> Array:
  """Stage 3's L_r = L1(t_e(f_e(output)), t_e(f_e(target))) (Eq. 4).

  The BCM (`params`, e.g. from `tasks.erl_pretext.load_bcm`) is frozen and
  the target a constant: gradients reach `output` only. Outputs and targets are
  correlated as two separate batches (the relationship among the corrected
  results vs. among the ground truths). Args as `relationship_features`.
  """
  params = jax.lax.stop_gradient(params)
  target = jax.lax.stop_gradient(target)
  model = model or model_from_params(params)
  features_out = relationship_features(params, output, mode=mode, mesh=mesh,
                                       model=model)
  features_gt = relationship_features(params, target, mode=mode, mesh=mesh,
                                      model=model)
  return jnp.mean(jnp.abs(features_out - features_gt))


def phase(spectrum: Array) -> Array:
  """angle(z), with angle(0) = 0 and a zero (not NaN) gradient there."""
  real, imag = jnp.real(spectrum), jnp.imag(spectrum)
  zero = (real == 0) & (imag == 0)
  return jnp.where(zero, 0.0, jnp.arctan2(imag, jnp.where(zero, 1.0, real)))


def phase_loss(images: Array, reconstructions: Array) -> Array:
  """L_pre = mean |phase(FFT(I)) - phase(FFT(I'))| (Eq. 3).

  The 2-D FFT runs per image and per channel over (H, W) of NHWC images in
  [0, 1] (as `np.angle(np.fft.fft2(x, axes=(1, 2)))`); the mean is over every
  frequency, channel and image. Phases are compared as the paper writes it,
  without wrapping the difference: a component near +-pi in one and -+pi in
  the other counts ~2 pi. For real images the (up to four) self-conjugate
  bins, DC and for even sizes the Nyquist ones, are real: one with a negative
  real part sits on that branch cut, where float rounding of a zero imaginary
  part picks the sign; they are a vanishing share of the bins. Every bin
  weighs the same, whatever its magnitude, so the many low-energy (noise)
  bins keep the loss high even for good reconstructions: unrelated phases
  average 2 pi / 3 ~ 2.09.
  """
  target = jax.lax.stop_gradient(phase(jnp.fft.fft2(images, axes=(1, 2))))
  return jnp.mean(jnp.abs(target - phase(jnp.fft.fft2(reconstructions,
                                                      axes=(1, 2)))))
