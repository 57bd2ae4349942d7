"""The CPU performance bars: `python -m fusedopt.bench bars`, kept under this name for the
commands already written down. Same options (`--help`)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a source checkout without `pip install -e .`
from fusedopt.bench.__main__ import main  # noqa: E402

sys.exit(main(["bars", *sys.argv[1:]]))
