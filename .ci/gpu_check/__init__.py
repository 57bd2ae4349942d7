"""The GPU check behind `.ci/gpu`: one command that builds fusedopt on a GPU machine, runs
every GPU test, the sanitizers and the benchmark, and writes one folder of results."""
