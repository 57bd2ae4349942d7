"""Benchmark harness: fusedopt against torch.optim on the same parameters.

Run ``python -m fusedopt.bench --help`` (``bars --help`` for the CPU bars). The modules:
``workloads`` (what is updated: shapes, and one optimizer case per registered optimizer
class), ``contenders`` (what is timed: torch.optim variants and fusedopt backends),
``measure`` (clocks, copy bandwidth, bytes moved from each optimizer's spec, environment,
the run loop), ``report`` (table, JSON, plot, progress), ``cli`` (the harness's options
and one measured run), ``bars`` (the CPU performance bars), ``__main__`` (subcommands).
"""
