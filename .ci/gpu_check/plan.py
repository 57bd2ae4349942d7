"""The parts of the GPU check, what each is expected to take, and what a time budget keeps.

Expected seconds are for the lent machine (one H200, 16 cores) and are estimates, not
measurements: the build's was scaled from this project's 2-core CI machine (rmsprop.cu,
the slowest file, takes about 2.5 minutes there for three architectures; the check
builds one), the others from the work each part does. Before each part the plan is made
again from the time actually left, so a fast build leaves more for the parts after it.
"""
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Level:
    name: str
    seconds: float
    what: str


@dataclass(frozen=True)
class Part:
    name: str
    levels: Tuple[Level, ...]  # richest first
    mandatory: bool = False
    # A time-boxed part stops when its time is up and reports how far it got (the
    # sanitizers); any other part may run past its estimate into what later parts expected.
    timeboxed: bool = False

    def level(self, name: str) -> Level:
        return next(level for level in self.levels if level.name == name)


PARTS: Tuple[Part, ...] = (
    Part("probe", (Level("full", 10, "versions: GPU, driver, CUDA, torch, triton, tools"),), mandatory=True),
    Part("build", (Level("full", 100, "pip install --no-build-isolation -e . (CUDA kernels for this GPU's arch)"),),
         mandatory=True),
    Part("guard", (Level("full", 15, "fusedopt._C imports from this checkout; CUDA kernels built and usable"),),
         mandatory=True),
    Part("tests", (Level("full", 120, "pytest -m 'cuda or triton' on the GPU; junit XML checked"),), mandatory=True),
    Part("bench", (
        Level("full", 150, "Adam, AdamW: large, GPT-2 XL, 10,000 x 4,096; fp32 and bf16 + master weights; 40 steps"),
        Level("reduced", 70, "Adam, AdamW: the same shapes, fp32 only, torch fused only; 20 steps"),
        Level("minimal", 40, "as reduced, 10 steps"),
    )),
    Part("memcheck", (
        Level("full", 120, "compute-sanitizer memcheck over tests/test_cuda.py (time-boxed)"),
        Level("subset", 60, "memcheck over every test of test_cuda.py but the 320-case grid"),
    ), timeboxed=True),
    Part("train_gpt", (
        Level("full", 45, "examples/train_gpt.py bf16 + GradScaler + clip + master weights, 24 layers, 50 steps"),
        Level("reduced", 25, "the same, 12 layers, 20 steps"),
    )),
    Part("racecheck_initcheck", (
        Level("full", 60, "compute-sanitizer racecheck and initcheck on three representative tests"),
    ), timeboxed=True),
    Part("finish", (Level("full", 5, "summary.json; output folder limits"),), mandatory=True),
)
PARTS_BY_NAME: Dict[str, Part] = {part.name: part for part in PARTS}

# What a short budget gives up, first to last: (part, the level it drops to; None drops it).
# The sanitizer subset goes first, then the bench's sizes; the bars' bench goes last.
SHRINK_LADDER: Tuple[Tuple[str, Optional[str]], ...] = (
    ("racecheck_initcheck", None),
    ("bench", "reduced"),
    ("train_gpt", "reduced"),
    ("memcheck", "subset"),
    ("train_gpt", None),
    ("memcheck", None),
    ("bench", "minimal"),
    ("bench", None),
)


@dataclass(frozen=True)
class Plan:
    budget_s: float
    chosen: Dict[str, Optional[Level]]  # part name -> level, None when dropped

    @property
    def expected_s(self) -> float:
        return sum(level.seconds for level in self.chosen.values() if level is not None)

    @property
    def fits(self) -> bool:
        return self.expected_s <= self.budget_s

    def dropped(self) -> List[str]:
        return [name for name, level in self.chosen.items() if level is None]

    def lines(self) -> List[str]:
        """The plan as printed: one line per part with its expected time."""
        lines = [f"plan for a budget of {self.budget_s:.0f} s (expected seconds on one H200 with 16 cores):"]
        for name, level in self.chosen.items():
            part = PARTS_BY_NAME[name]
            if level is None:
                lines.append(f"  {name:<20} {'-':>5}  dropped (budget); at full: {part.levels[0].what}")
            else:
                lines.append(f"  {name:<20} {level.seconds:5.0f}  [{level.name}] {level.what}")
        verdict = "fits" if self.fits else "DOES NOT FIT: the mandatory parts alone exceed it"
        lines.append(f"  {'total':<20} {self.expected_s:5.0f}  {verdict}")
        return lines


def make_plan(budget_s: float, remaining: Optional[Iterable[str]] = None) -> Plan:
    """The richest levels of the `remaining` parts (all by default) that fit `budget_s`,
    shrinking along SHRINK_LADDER; mandatory parts are always kept."""
    names = list(remaining) if remaining is not None else [part.name for part in PARTS]
    chosen: Dict[str, Optional[Level]] = {name: PARTS_BY_NAME[name].levels[0] for name in names}
    plan = Plan(budget_s, chosen)
    for name, target in SHRINK_LADDER:
        if plan.fits:
            break
        current = chosen.get(name)
        if current is None:
            continue
        part = PARTS_BY_NAME[name]
        if target is None:
            chosen[name] = None
        elif part.levels.index(part.level(target)) > part.levels.index(current):
            chosen[name] = part.level(target)
    return plan


def allowed_seconds(part: Part, level: Level, remaining_s: float, later: Plan) -> float:
    """How long `part` may run, `remaining_s` before the deadline, with `later` the plan of
    the parts after it: a time-boxed part gets its estimate or whatever the later parts
    will not need, whichever is more; any other part everything but the later mandatory
    parts' time."""
    later_mandatory = sum(level.seconds for name, level in later.chosen.items()
                          if level is not None and PARTS_BY_NAME[name].mandatory)
    if part.timeboxed:
        spare = remaining_s - later.expected_s
        return max(0.0, min(remaining_s - later_mandatory, max(level.seconds, spare)))
    return max(0.0, remaining_s - later_mandatory)


def parts_after(name: str) -> Sequence[str]:
    names = [part.name for part in PARTS]
    return names[names.index(name) + 1:]
