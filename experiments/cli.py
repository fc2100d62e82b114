"""What the command lines beside run.py share: bad input is one `error:` line and exit status 2."""

import sys

from absl import flags


def fail(message: str) -> None:
    """One line on stderr starting `error:`, then exit status 2 (docs/troubleshooting.md)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with a bad flag reported as one line (`fail`)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e).strip().splitlines()[0])
