"""`python -m fusedopt.bench [bars] ...` (console script `fusedopt-bench`): the harness, or
with `bars` first the CPU performance bars."""
import sys
from typing import Optional, Sequence

from . import bars, cli


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bars"]:
        return bars.main(argv[1:])
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
