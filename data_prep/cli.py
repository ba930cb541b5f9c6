"""Running an absl CLI in-process on fresh flags (for tests and callers).

The CLIs here define their flags only when run as `__main__` (or into a
FlagValues given to them), so importing several of them never clashes on
flag names such as --output_dir. `run` parses arguments into a fresh
FlagValues and calls the CLI's main, as `python -m` would.
"""

from typing import Callable, Sequence

from absl import app
from absl import flags


def run(program: str, define_flags: Callable[[flags.FlagValues], None],
        main: Callable[..., int], args: Sequence[str]) -> int:
  """Parses `args` (no program name) for `program` and returns main's code."""
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  try:
    argv = flag_values([program, *args])
  except flags.Error as e:
    raise app.UsageError(str(e)) from e
  return main(argv, flag_values)
