"""Keeps the CLIs' logs readable: libraries' INFO lines are dropped.

Every checkpoint write is ~40 INFO lines of orbax, every dataset access a few
of TFDS; a training or evaluation log would be mostly those. Their warnings
and errors still show, except gcsfs's: it warns on every bucket access
without Google credentials (an emulator's case) and logs each exhausted
retry with a traceback before raising; the exception reaches the user
anyway, named, through `data_prep.storage`.
"""

import logging

from absl import logging as absl_logging

_QUIET_LIBRARIES = ('/orbax/', '/tensorflow_datasets/', '/grain/', '/etils/')
_SILENCED_LOGGERS = ('gcsfs',)


class _QuietLibraries(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.WARNING or
            not any(part in record.pathname for part in _QUIET_LIBRARIES))


def install() -> None:
  """Adds the filter to absl's log handler (call once, in `main`)."""
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())
  for name in _SILENCED_LOGGERS:
    logging.getLogger(name).setLevel(logging.CRITICAL)
