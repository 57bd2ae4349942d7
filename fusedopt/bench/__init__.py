"""Benchmark harness: fusedopt against torch.optim on the same parameters.

Run ``python -m fusedopt.bench --help``. The modules, top to bottom:
``cli`` (options), ``workloads`` (what is updated), ``cases`` (optimizer
configurations), ``traffic`` (bytes an update must move), ``contenders``
(torch.optim variants and fusedopt backends), ``timing`` (clocks and
round-robin sampling), ``runner`` (the measurement loop), ``report``,
``plot`` and ``progress`` (output), ``environment`` (what it ran on),
``session`` (one run as an entry point makes it).
"""
