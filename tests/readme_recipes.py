"""The commands of README.md's "Reproducing the papers", read from the text.

`read(readme_text)` returns them in the README's order: per subsection
(`### UEC ...`), the lines of its ```bash blocks and the backticked
`python -m ...` commands of its tables' build, train and evaluate columns
(row by row, left to right). A command may start with `NAME=value`
assignments. Cells that name no command ("none: ...") give none; text
around the backticks is not read.
"""

import dataclasses
import re
import shlex

SECTION = '## Reproducing the papers'
COMMAND_COLUMNS = ('build', 'train', 'evaluate')
_ASSIGNMENT = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*=')


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One README command and where it stands."""
  subsection: str  # The subsection's first word: 'UEC', 'RECNet', 'ERL'.
  where: str  # 'MSEC / train', 'bash block 1', ...
  text: str  # The command as the README writes it.

  @property
  def words(self) -> list[str]:
    """The command split as a POSIX shell splits it (quotes removed, `~`
    left as written)."""
    return shlex.split(self.text)

  @property
  def module(self) -> str:
    """The `python -m` module the command runs."""
    words = [w for w in self.words if not _ASSIGNMENT.match(w)]
    assert words[:2] == ['python', '-m'], self.text
    return words[2]

  @property
  def test_id(self) -> str:
    return re.sub(r'[^A-Za-z0-9]+', '_',
                  f'{self.subsection} {self.where}').strip('_')


def section(readme_text: str) -> str:
  """The text of "## Reproducing the papers", up to the next `## `."""
  start = readme_text.index(SECTION + '\n')
  end = readme_text.find('\n## ', start + len(SECTION))
  return readme_text[start:] if end < 0 else readme_text[start:end]


def split_row(line: str) -> list[str]:
  """The cells of a markdown table row; a `|` inside backticks is text."""
  cells, current, in_code = [], [], False
  for char in line.strip().strip('|'):
    if char == '`':
      in_code = not in_code
    if char == '|' and not in_code:
      cells.append(''.join(current).strip())
      current = []
    else:
      current.append(char)
  cells.append(''.join(current).strip())
  return cells


def is_command(code: str) -> bool:
  """Whether a backticked span is a whole `python -m` command."""
  words = code.split()
  while words and _ASSIGNMENT.match(words[0]):
    words = words[1:]
  return words[:2] == ['python', '-m'] and len(words) > 2


def cell_commands(cell: str) -> list[str]:
  return [code for code in re.findall(r'`([^`]+)`', cell) if is_command(code)]


def command_columns(header: list[str]) -> dict[int, str]:
  """Column index -> 'build' / 'train' / 'evaluate' of a table header."""
  return {i: name for i, cell in enumerate(header)
          for name in COMMAND_COLUMNS if cell.lower().startswith(name)}


def tables(text: str):
  """(header cells, data rows) of each markdown table in `text`."""
  lines = text.splitlines()
  i = 0
  while i < len(lines):
    if (lines[i].startswith('|') and i + 1 < len(lines) and
        re.match(r'^\|[-|: ]+\|$', lines[i + 1].strip())):
      header = split_row(lines[i])
      rows = []
      i += 2
      while i < len(lines) and lines[i].startswith('|'):
        rows.append(split_row(lines[i]))
        i += 1
      yield header, rows
    else:
      i += 1


def subsections(text: str) -> list[tuple[str, str]]:
  """(first word of the title, text) of each `### ` subsection."""
  parts = re.split(r'^### ', text, flags=re.MULTILINE)[1:]
  return [(part.split()[0], part) for part in parts]


def bash_commands(text: str) -> list[str]:
  """The commands of the ```bash blocks of `text` (continuations joined,
  comments and blank lines dropped)."""
  commands = []
  for block in re.findall(r'^```bash\n(.*?)^```', text,
                          flags=re.MULTILINE | re.DOTALL):
    logical = re.sub(r'\\\n\s*', ' ', block)
    for line in logical.splitlines():
      line = line.strip()
      if line and not line.startswith('#'):
        commands.append(line)
  return commands


def read(readme_text: str) -> list[Recipe]:
  """Every command of the section, in the README's order (see module)."""
  recipes = []
  for name, text in subsections(section(readme_text)):
    pieces = [(m.start(), 'bash', m.group(0)) for m in re.finditer(
        r'^```bash\n.*?^```', text, flags=re.MULTILINE | re.DOTALL)]
    pieces += [(m.start(), 'table', m.group(0)) for m in re.finditer(
        r'^\|.*\n\|[-|: ]+\|\n(?:\|.*(?:\n|$))*', text, flags=re.MULTILINE)]
    for number, (_, kind, piece) in enumerate(sorted(pieces), 1):
      if kind == 'bash':
        for i, command in enumerate(bash_commands(piece), 1):
          recipes.append(Recipe(name, f'bash {number} line {i}', command))
        continue
      for header, rows in tables(piece):
        columns = command_columns(header)
        for row in rows:
          row_name = row[0].split(' (')[0]
          for index, column in columns.items():
            commands = cell_commands(row[index]) if index < len(row) else []
            for i, command in enumerate(commands, 1):
              suffix = f' {i}' if len(commands) > 1 else ''
              recipes.append(Recipe(name, f'{row_name} {column}{suffix}',
                                    command))
  return recipes


def incomplete_cells(readme_text: str, names=None) -> list[str]:
  """Build / train / evaluate cells that point elsewhere instead of giving
  a command ("as above with ...", "the MSEC command with ...", "... ")."""
  found = []
  pattern = re.compile(r'\bas above\b|\bas (?:the )?MSEC\b|\bthe MSEC '
                       r'command\b|^`?\.\.\.|\bthe same with\b|\bas for\b',
                       re.IGNORECASE)
  for name, text in subsections(section(readme_text)):
    if names is not None and name not in names:
      continue
    for header, rows in tables(text):
      for row in rows:
        for index, column in command_columns(header).items():
          cell = row[index] if index < len(row) else ''
          if pattern.search(cell) or not (cell_commands(cell) or
                                          cell.lower().startswith('none')):
            found.append(f'{name} / {row[0]} / {column}: {cell}')
  return found
