#!/usr/bin/env bash
# The math layer's mutation score: mutmut over src/ddpm/core/diffusion/* with the core tests
# (pyproject.toml [tool.mutmut]: test_diffusion, test_samplers, test_solvers, test_reference_samplers,
# test_resample; -m "not slow"). Results and the list of equivalent mutants: bench/results/mutation_diffusion.md.
#
#   pip install -e .[dev]                # mutmut (a dev extra; not in [test], not run in CI)
#   bench/mutation.sh                    # all mutants: ~28 min on 2 shared cores (2 workers)
#   bench/mutation.sh NAME [NAME ...]    # only these mutants (e.g. the survivors of a previous run)
#   mutmut show NAME                     # the diff of one mutant; `mutmut results` lists the survivors
#
# mutmut copies src/, tests/ and conf/ into mutants/ (gitignored) and runs, for each mutant, only the tests that
# reached the mutated function. On the shared 2-core machine it runs under the CPU lock, time-boxed
# (MUTATION_TIMEOUT seconds, default 2400); an interrupted run resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
unset PYTHONPATH  # mutmut puts mutants/src first on sys.path itself
lock=(flock /tmp/ddpm-cpu.lock)
command -v flock >/dev/null && [ -e /tmp/ddpm-cpu.lock ] || lock=()
start=$(date +%s)
"${lock[@]}" timeout "${MUTATION_TIMEOUT:-2400}" mutmut run --max-children 2 "$@" || echo "mutmut exited with $?"
echo "wall time: $(( $(date +%s) - start )) s (including any wait for the lock)"
mutmut results --all true 2>/dev/null | awk -F': ' '{print $NF}' | sort | uniq -c
