"""Optimizers torch.optim lacks, written with torch's own multi-tensor (foreach) ops: the
fastest way torch offers to run them, and so the "torch's fastest implementation" their
host-overhead bars are held to (fusedopt.bench.bars). Each is timed only there, as the row
``torch-ops[foreach]``."""
from typing import List

import torch

from .contenders import Contender, _factory
from .workloads import OptimizerCase

TORCH_OPS_LABEL = "torch-ops[foreach]"


class ForeachLion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, Algorithm 2) in five foreach calls per group: decoupled weight
    decay, the sign of the interpolated momentum, the step, then the momentum update."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):  # the bench steps without a closure
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                if not self.state[p]:
                    self.state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avgs = [self.state[p]["exp_avg"] for p in params]
            beta1, beta2 = group["betas"]
            if group["weight_decay"] != 0:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            direction = torch._foreach_lerp(exp_avgs, grads, 1 - beta1)  # beta1*m + (1-beta1)*g
            torch._foreach_sign_(direction)
            torch._foreach_add_(params, direction, alpha=-group["lr"])
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta2)  # m = beta2*m + (1-beta2)*g


TORCH_OPS = {"Lion": ForeachLion}


def torch_ops_contenders(case: OptimizerCase) -> List[Contender]:
    """The foreach implementation of ``case`` written here, if torch.optim lacks the optimizer
    and one is; else none."""
    if hasattr(torch.optim, case.class_name) or case.class_name not in TORCH_OPS:
        return []
    return [Contender(label=TORCH_OPS_LABEL, kind="torch", variant="foreach",
                      make=_factory(TORCH_OPS[case.class_name], case.hyper))]
