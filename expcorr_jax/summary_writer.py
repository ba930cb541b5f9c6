"""TensorBoard event files (scalars, images, text) without TensorFlow.

clu's metric writers need TensorFlow; the `tensorboard` package itself ships
the event-file writer and protos, which is all a summary needs. Only process 0
writes, so multi-host runs produce one set of event files.

A bucket (`gs://...`) cannot append to an object, and TensorBoard's writer
appends, so for a remote logdir the event file is written in a local
temporary folder and uploaded whole (replacing the object) at every `flush`
(after each evaluation) and at `close`: TensorBoard, reading the bucket,
sees the events up to the last flush.
"""

import os
import shutil
import tempfile
import time
from typing import Mapping

from absl import logging

import jax
import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.summary.writer import event_file_writer

from data_prep import image_codec
from data_prep import storage
from expcorr_jax import pixels


class SummaryWriter:
  """Writes TensorBoard summaries into `logdir` (process 0 only)."""

  def __init__(self, logdir: str, *, enabled: bool | None = None):
    self._enabled = jax.process_index() == 0 if enabled is None else enabled
    self._writer = None
    self._logdir = storage.path(logdir)
    self._staging = None
    if self._enabled:
      self._logdir.mkdir(parents=True, exist_ok=True)
      if storage.is_remote(self._logdir):
        self._staging = tempfile.mkdtemp(prefix='expcorr_events_')
        logging.info('Event files are written in %s and uploaded to %s at '
                     'every flush.', self._staging, self._logdir)
      self._writer = event_file_writer.EventFileWriter(
          self._staging or os.fspath(self._logdir))

  def _write(self, step: int, values: list[summary_pb2.Summary.Value]):
    if self._writer is None or not values:
      return
    event = event_pb2.Event(wall_time=time.time(), step=int(step),
                            summary=summary_pb2.Summary(value=values))
    self._writer.add_event(event)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    self._write(step, [
        summary_pb2.Summary.Value(tag=name, simple_value=float(value))
        for name, value in scalars.items()
    ])

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Writes HxWx3 images (uint8, uint16 or float in [0, 1]) as 8-bit PNGs."""
    values = []
    for name, image in images.items():
      image = pixels.to_uint8(image)
      encoded = summary_pb2.Summary.Image(
          height=image.shape[0], width=image.shape[1], colorspace=3,
          encoded_image_string=image_codec.encode_png(image))
      values.append(summary_pb2.Summary.Value(tag=name, image=encoded))
    self._write(step, values)

  def write_text(self, step: int, texts: Mapping[str, str]) -> None:
    values = []
    for name, text in texts.items():
      metadata = summary_pb2.SummaryMetadata(
          plugin_data=summary_pb2.SummaryMetadata.PluginData(
              plugin_name='text'))
      tensor = tensor_pb2.TensorProto(dtype=7,  # DT_STRING
                                       string_val=[text.encode()])
      tensor.tensor_shape.dim.add(size=1)
      values.append(summary_pb2.Summary.Value(tag=name, metadata=metadata,
                                              tensor=tensor))
    self._write(step, values)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()
      self._upload()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
      self._upload()
      if self._staging is not None:
        shutil.rmtree(self._staging, ignore_errors=True)

  def _upload(self) -> None:
    """Copies the staged event file(s) whole to a remote logdir."""
    if self._staging is not None:
      storage.copy_tree(self._staging, self._logdir)
