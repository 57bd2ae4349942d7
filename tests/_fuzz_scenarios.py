"""The fuzzer's examples (tests/test_fuzz.py): what one is, and the hypothesis strategies
that draw them. An example is plain data (it pickles, so it can be sent to the process
that runs it); _fuzz_runner.py realises it as tensors and runs it.

Irregular inputs (odd layouts and dtypes, overlapping or duplicate params, grads of the
wrong kind) are drawn rarely per example, so that most examples get past their first
step, and as the high choice of each draw, so that hypothesis shrinks them away.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from hypothesis import strategies as st

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
FLOAT_DTYPES = (F32, F64, BF16, F16)
LOW_PRECISION = (BF16, F16)
# The dtypes of one example's params (and of anything swapped in): float32/float64 alone
# compare against torch.optim; a 16-bit dtype anywhere, against fusedopt's other backend.
POOLS = ((F32,), (F64,), (F32, F64), (BF16,), (F16,), (F32, BF16), FLOAT_DTYPES)
SIZES = (1, 2, 3, 5, 0, 7, 17)
LAYOUTS = ("contiguous", "permuted", "strided", "expanded")


# --------------------------------------------------------------------------- the scenario
@dataclass(frozen=True)
class ParamSpec:
    dtype: torch.dtype
    shape: Tuple[int, ...]
    layout: str  # one of LAYOUTS
    storage: Optional[int]  # params with the same number are views of one storage; None: its own
    pad: int  # elements between the previous tensor's region and this one; negative overlaps it


@dataclass(frozen=True)
class Mutation:
    kind: str
    target: int  # a param, modulo the number of params
    variant: int
    which: int  # a state entry, modulo the number of entries


@dataclass(frozen=True)
class Step:
    mutations: Tuple[Mutation, ...]
    grads: int  # picks a regular grad kind per param (see grad_kinds); 0: all "fresh"
    odd_grads: Tuple[Tuple[int, str], ...]  # (param, kind): irregular grads in their place

    def grad_kinds(self, n: int) -> List[str]:
        """One kind per param: drawn from `grads` rather than by hypothesis one by one,
        which made generating an example slower than running it."""
        rng = random.Random(self.grads)
        kinds = [REGULAR_GRADS[rng.randrange(len(REGULAR_GRADS))] if self.grads else "fresh" for _ in range(n)]
        for i, kind in self.odd_grads:
            kinds[i] = kind
        return kinds


@dataclass(frozen=True)
class Scenario:
    optimizer: str
    options: Tuple[Tuple[str, object], ...]
    pool: Tuple[torch.dtype, ...]
    params: Tuple[ParamSpec, ...]
    order: Tuple[int, ...]  # the list the optimizer gets: indices into params; a repeat is a duplicate
    steps: Tuple[Step, ...]
    breaking: Optional[Mutation]  # applied before the last step: a storage shrunk or freed
    seed: int


# Grad kinds a careful user hands torch.optim, and the others, which fusedopt may refuse.
REGULAR_GRADS = ("fresh", "keep", "none", "contiguous", "expanded", "strided")
ODD_GRADS = ("dtype", "reshaped", "broadcast", "same_strides", "alias_self", "alias_other", "shrunk", "sparse")
MUTATIONS = ("zero_grad", "swap_data", "del_state", "replace_state", "load_state_dict", "grad_t", "grow_state")
BREAKING = ("free_state", "shrink_param_storage", "shrink_grad_storage")

FUSEDOPT_EXTRAS = ("master_weights", "max_grad_norm")


def _rarely(draw, strategy, default, one_in: int = 8):
    """`default`, or once in `one_in` draws a value of `strategy`. (The rare branch is the
    high integer, so hypothesis shrinks towards the default.)"""
    return draw(strategy) if draw(st.integers(0, one_in - 1)) == one_in - 1 else default


# Per optimizer: each option's valid values (the first shrinks best) and values torch.optim
# rejects with ValueError. One example in eight gets one invalid option.
OPTIONS = {
    "Adam": dict(
        lr=((1e-2, 1e-3, 0.1, 0.0), (-1e-3,)),
        betas=(((0.9, 0.999), (0.5, 0.9), (0.0, 0.0)), ((1.0, 0.999), (0.9, -0.1))),
        eps=((1e-8, 1e-3), (-1e-8,)),
        weight_decay=((0.0, 0.1), (-0.1,)),
        amsgrad=((False, True), ()), maximize=((False, True), ()), optimized_update=((False, True), ()),
    ),
    "SGD": dict(
        lr=((5e-2, 0.1, 0.0), (-0.1,)),
        momentum=((0.0, 0.9, 0.5), (-0.9,)),
        dampening=((0.0, 0.5), ()),
        nesterov=((False, True), ()),  # kept only with momentum and no dampening, unless drawn as invalid
        weight_decay=((0.0, 0.1), (-0.1,)),
        maximize=((False, True), ()),
    ),
    "RMSprop": dict(
        lr=((1e-2, 1e-3, 0.0), (-0.1,)),
        # not alpha=0 with centered=True: the variance estimate is then g*g - g*g, pure rounding
        # error, and one ulp of it moves the step by eps's order (test_errors covers alpha=0)
        alpha=((0.99, 0.5, 1.0), (-0.5,)),
        eps=((1e-8, 1e-3), (-1.0,)),
        weight_decay=((0.0, 0.1), (-0.1,)),
        momentum=((0.0, 0.9), (-0.1,)),
        centered=((False, True), ()), maximize=((False, True), ()),
    ),
}
OPTIONS["AdamW"] = OPTIONS["Adam"]


@st.composite
def _options(draw, optimizer: str, pool) -> Tuple[Tuple[str, object], ...]:
    table = OPTIONS[optimizer]
    options = {key: draw(st.sampled_from(valid)) for key, (valid, _) in table.items()}
    if any(d in LOW_PRECISION for d in pool):
        options["master_weights"] = draw(st.sampled_from((False, True)))
    options["max_grad_norm"] = _rarely(draw, st.sampled_from((1.0, 1e-2)), None, one_in=4)
    invalid = {key: bad for key, (_, bad) in table.items() if bad}
    invalid["max_grad_norm"] = (0.0, -1.0)
    if optimizer == "SGD":
        invalid["nesterov"] = (True,)
        if options["nesterov"] and (options["momentum"] == 0 or options["dampening"] != 0):
            options["nesterov"] = False
    key = _rarely(draw, st.sampled_from(sorted(invalid)), None)
    if key is not None:
        options[key] = draw(st.sampled_from(invalid[key]))
        if key == "nesterov":
            options.update(momentum=0.0)
    return tuple(options.items())


@st.composite
def _param_spec(draw, pool, odd: frozenset) -> ParamSpec:
    """`odd`: which irregular features this example's params may have (most have none, so
    that most examples get past their first step)."""
    dtype = draw(st.sampled_from(pool))
    if "dtype" in odd:
        dtype = _rarely(draw, st.sampled_from((torch.complex64, torch.int32)), dtype, one_in=4)
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.sampled_from(SIZES)) for _ in range(ndim))
    if ndim == 1:
        shape = _rarely(draw, st.sampled_from(((33,), (100,), (1000,))), shape)
    layout = draw(st.sampled_from(LAYOUTS[:2]))
    if "layout" in odd:
        layout = _rarely(draw, st.sampled_from(LAYOUTS[2:]), layout, one_in=4)
    storage = draw(st.sampled_from((None, None, None, 0, 1, 2)))
    pad = draw(st.integers(0, 5))
    if "overlap" in odd:
        pad = _rarely(draw, st.just(-1), pad, one_in=4)
    return ParamSpec(dtype, shape, layout, storage, pad)


@st.composite
def _mutation(draw, kinds=MUTATIONS) -> Mutation:
    return Mutation(draw(st.sampled_from(kinds)), draw(st.integers(0, 39)), draw(st.integers(0, 4)),
                    draw(st.integers(0, 3)))


@st.composite
def scenarios(draw, max_params: int = 40) -> Scenario:
    optimizer = draw(st.sampled_from(("Adam", "SGD", "AdamW", "RMSprop")))
    pool = draw(st.sampled_from(POOLS))
    odd = _rarely(draw, st.frozensets(st.sampled_from(("layout", "dtype", "overlap", "duplicates")), min_size=1),
                  frozenset(), one_in=4)
    # mostly a few params (a step over many small ones costs more and finds little more)
    size = _rarely(draw, st.integers(min(9, max_params), max_params), draw(st.integers(1, min(8, max_params))), one_in=4)
    size = _rarely(draw, st.just(0), size, one_in=20)
    params = tuple(draw(st.lists(_param_spec(pool, odd), min_size=size, max_size=size)))
    order = tuple(range(len(params)))
    if params and "duplicates" in odd:
        order += tuple(draw(st.lists(st.integers(0, len(params) - 1), min_size=1, max_size=2)))
    n_steps = draw(st.integers(1, 5))
    steps = []
    for i in range(n_steps):
        mutations = tuple(draw(st.lists(_mutation(), max_size=2 if i else 1)))
        grads = draw(st.integers(0, 2**16))
        odd_grads = ()
        if params:
            odd_grads = tuple(_rarely(draw, st.lists(st.tuples(st.integers(0, len(params) - 1),
                                                               st.sampled_from(ODD_GRADS)), min_size=1, max_size=2),
                                      [], one_in=4))
        steps.append(Step(mutations, grads, odd_grads))
    steps = tuple(steps)
    breaking = _rarely(draw, _mutation(BREAKING), None, one_in=6)
    return Scenario(optimizer, draw(_options(optimizer, pool)), pool, params, order, steps, breaking,
                    draw(st.integers(0, 2**31 - 1)))
