"""The mutation report of the math layer: reads mutmut's results (after ``bench/mutation.sh``) and writes
bench/results/mutation_diffusion.md: mutants, killed, survived, equivalent (each with its one-line reason).

    python bench/mutation_report.py --seconds 1655 --out bench/results/mutation_diffusion.md

A surviving mutant is either killed by a new test (then it no longer survives) or listed below as equivalent:
``EQUIVALENT`` (no input changes the result), ``CPU_ONLY`` (only a device argument changes: every tensor of this
run is on the CPU, so the two agree here; a GPU run would tell them apart) or ``IMPORT_TIME`` (code that runs
when ``ddpm.core.diffusion`` is imported, before mutmut's trampoline selects the mutant, so no test can see it).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

P = "ddpm.core.diffusion."
S, G, SM, SC, L, R, N = (P + m for m in ("solvers.", "gaussian.", "samplers.", "schedules.", "losses.",
                                         "resample.", "noise."))
GD = G + "xǁGaussianDiffusionǁ"

EQUIVALENT = {
    S + "x_lambda_timesteps__mutmut_41": "idx's dtype: np.interp computes in float64 from int indices alike",
    S + "x_lambda_timesteps__mutmut_45": "idx's dtype (omitted): as _41",
    S + "x_lambda_timesteps__mutmut_76": "lower clip: the running max from the end starts at ts[-1] = t_lo "
                                         "(the last target is lambda(t_lo) exactly), so g >= t_lo already",
    S + "x_dpm_solver_timesteps__mutmut_36": "t_lo omitted: its default is 0",
    S + "x_lambda_timesteps__mutmut_12": "n == number of indices through the general path: the distinct-index "
                                         "repair then keeps every index, as the shortcut does",
    S + "x_lambda_timesteps__mutmut_15": "as _12 (the shortcut moved to n > number of indices)",
    GD + "_as_t__mutmut_5": "dtype of torch.full with a Python int: int64 either way",
    GD + "_as_t__mutmut_9": "as _5",
    S + "xǁ_Chainǁlevel__mutmut_2": "alpha at the clean end: both updates return x0 at lambda = inf before "
                                    "reading it",
    S + "xǁ_Chainǁlevel__mutmut_3": "sigma at the clean end: as _2",
    S + "xǁ_Chainǁrun__mutmut_13": "dtype of torch.full with a Python int: int64 either way",
    S + "xǁ_Chainǁrun__mutmut_17": "dtype omitted: as _13",
    S + "x__timesteps_and_start__mutmut_31": "zip(strict=None): strict defaults to False",
    S + "x__timesteps_and_start__mutmut_34": "zip without strict: as _31",
    S + "x_restart_plan__mutmut_23": "next()'s default: unreachable, the main pass ends at 0 < t_min",
    S + "x_restart_plan__mutmut_25": "next()'s default omitted: as _23",
    S + "x_restart_plan__mutmut_28": "next()'s default: as _23",
    S + "x_restart_plan__mutmut_29": "next()'s default: as _23",
    S + "x_restart_plan__mutmut_30": "unreachable check: ts[at] <= t_min < t_max, and at = 0 needs ts[0] = T-1 "
                                     "<= t_min < t_max < T (see the report's findings)",
    S + "x_restart_plan__mutmut_33": "unreachable check: as _30",
    S + "x_restart_plan__mutmut_34": "the message of the unreachable check: as _30",
    S + "x_check_restart__mutmut_21": "the bound without T (t_max + 1 or + 2) is always met",
    GD + "__init____mutmut_42": "np.arange(T) is int64 already (64-bit platforms)",
    GD + "__init____mutmut_44": "as _42",
    GD + "__init____mutmut_47": "np.asarray of Python ints / int64 arrays is int64 already",
    GD + "__init____mutmut_49": "as _47",
    GD + "__init____mutmut_161": "an internal invariant (assert) made weaker: it never fires for valid input",
    GD + "__init____mutmut_166": "register_buffer(persistent=None): falsy, the buffer stays non-persistent",
    GD + "__init____mutmut_174": "as _166",
    GD + "training_losses__mutmut_53": "clip_denoised=None is falsy: the same as False",
    GD + "training_losses__mutmut_87": "as _53",
    SM + "x_respace__mutmut_39": "np.asarray of Python floats is float64 already",
    SM + "x_respace__mutmut_41": "as _39",
    SM + "x_space_timesteps__mutmut_55": "the stride of a one-step section is never used (it keeps its start)",
    SC + "x__linear__mutmut_6": "np.linspace's default dtype is float64",
    SC + "x__linear__mutmut_10": "as _6",
    SC + "x__quad__mutmut_7": "as _linear _6",
    SC + "x__quad__mutmut_11": "as _linear _6",
    SC + "x_betas_for_alpha_bar__mutmut_17": "np.asarray of Python floats is float64 already",
    SC + "x_betas_for_alpha_bar__mutmut_19": "as _17",
    SC + "x_get_beta_schedule__mutmut_18": "an internal invariant (assert) made weaker: never fires for the "
                                           "named schedules",
    SC + "x_get_beta_schedule__mutmut_21": "as _18",
    SC + "x_get_beta_schedule__mutmut_23": "as _18",
    SC + "x_get_beta_schedule__mutmut_26": "as _18",
    SC + "x_get_beta_schedule__mutmut_27": "as _18",
    SC + "x_schedule_name__mutmut_3": "np.asarray of float64 arrays / Python floats is float64 already",
    SC + "x_schedule_name__mutmut_5": "as _3",
    L + "x_normal_kl__mutmut_10": "torch.tensor(t, dtype=ref.dtype) of a tensor argument has its values; only "
                                  "mixed-dtype tensor arguments would differ, and no caller mixes them",
    L + "x_discretized_gaussian_log_likelihood__mutmut_33": "x <= -0.999 vs x < -0.999: no pixel value "
                                                            "(k / 127.5 - 1) lies at the edge",
    L + "x_discretized_gaussian_log_likelihood__mutmut_41": "as _33, at +0.999",
    R + "xǁUniformTSamplerǁsample__mutmut_8": "torch.randint(high, size) is torch.randint(0, high, size)",
}

CPU_ONLY = {
    S + "xǁ_Chainǁrandn__mutmut_4", S + "xǁ_Chainǁrun__mutmut_14", S + "xǁ_Chainǁrun__mutmut_18",
    S + "x__timesteps_and_start__mutmut_7", S + "x__timesteps_and_start__mutmut_53",
    G + "x_extract__mutmut_2", GD + "_as_t__mutmut_6", GD + "_as_t__mutmut_10", GD + "_as_t__mutmut_18",
    GD + "model_timesteps__mutmut_1", GD + "prior_bpd__mutmut_2", GD + "prior_bpd__mutmut_5",
    GD + "prior_bpd__mutmut_6", SM + "x__device__mutmut_1",
    SM + "x__randn__mutmut_8", SM + "x__randn__mutmut_11", SM + "x__randn__mutmut_14", SM + "x__randn__mutmut_17",
    SM + "x__randn__mutmut_19", SM + "x__randn__mutmut_21", SM + "x__init__mutmut_21", SM + "x__init__mutmut_33",
    SM + "x__init__mutmut_35", SM + "x_respace__mutmut_42", N + "xǁSeededNoiseǁ__init____mutmut_14",
    N + "xǁSeededNoiseǁrandn__mutmut_14", N + "xǁSeededNoiseǁrandn__mutmut_18",
    L + "x_normal_kl__mutmut_14", L + "x_normal_kl__mutmut_17",
    R + "xǁTSamplerǁsample__mutmut_16", R + "xǁTSamplerǁsample__mutmut_17",
    R + "xǁUniformTSamplerǁsample__mutmut_7", R + "xǁUniformTSamplerǁsample__mutmut_11",
    R + "xǁUniformTSamplerǁsample__mutmut_14", R + "xǁUniformTSamplerǁsample__mutmut_16",
}
CPU_REASON = "only a device argument (or the mps branch) changes; every tensor of this run is on the CPU"

IMPORT_TIME = re.compile(re.escape(P + "registry.x_register__mutmut_"))
IMPORT_REASON = ("@register runs when ddpm.core.diffusion is imported, before the mutant is selected; the registry's "
                 "contents are checked by test_solvers.py::test_every_registered_sampler_has_its_config_and_the_"
                 "other_way_round")


NOTES = """## How the score was reached

* First run (2026-12-06, all 1857 mutants, with the core tests as they were before this work: the new
  Restart and importance-sampling tests came later): 1548 killed, 274 survived, 35 without a covering test
  (83.4% raw), 1655 s.
* Every survivor was read (`mutmut show NAME`). New tests in the same five files (the "contracts and edges"
  sections: boundaries, messages matched from their start, dtypes, the generator path, space_timesteps by hand,
  SeededNoise's repr, the t-sampler's state and small histories, evaluations per image, schedule_name) killed
  them, or they are listed below with the reason each cannot be told apart.
* Second run over the 309 survivors with the new tests: 211 more killed, 468 s. The 4 non-equivalent ones
  left were killed by three more tests, checked by hand (below): the CPU lock was taken for the rest of the
  session, so the third mutmut run did not happen.

## Findings

* `restart_plan`'s check "the main pass has no step between restart_t_max and restart_t_min" can never fire:
  `ts[at] <= t_min < t_max` by construction, and `at == 0` would need `ts[0] = T-1 <= t_min`, which
  `check_restart` already refuses (`t_min < t_max < T`). Harmless dead code; mutants _30, _33, _34 below.
* No bug in `src/ddpm/core/diffusion/` was found: every killed survivor was a gap in the tests.
* Not covered by this run: the training step's loss path in `module.py` (the importance-sampling step has its
  own mutation tests in tests/test_resample.py); a GPU run would also see the 35 device-only mutants.
"""


# Survivors of the last mutmut run killed since by tests added after it, each checked by running that test in
# mutants/ with MUTANT_UNDER_TEST=NAME and PYTHONPATH=mutants/src (mutmut's own mechanism); the next
# bench/mutation.sh run records them as killed.
KILLED_BY_HAND = {
    GD + "training_losses__mutmut_68": "test_diffusion.py::test_training_losses_draw_their_noise_from_the_global_"
                                       "rng_and_report_the_mse_term",
    GD + "training_losses__mutmut_69": "as _68",
    SM + "x_space_timesteps__mutmut_20": "test_samplers.py::test_space_timesteps_and_respace_errors_name_the_problem",
    S + "x__timesteps_and_start__mutmut_52": "test_solvers.py::test_a_generator_alone_drives_every_draw",
}


def results() -> dict[str, str]:
    out = subprocess.run(["mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    return {name.strip(): status.strip() for name, status in (ln.rsplit(": ", 1) for ln in out.splitlines() if
                                                             ": " in ln)}


def classify(name: str) -> tuple[str, str] | None:
    if name in EQUIVALENT:
        return "equivalent", EQUIVALENT[name]
    if name in CPU_ONLY:
        return "equivalent on CPU", CPU_REASON
    if IMPORT_TIME.match(name):
        return "import time", IMPORT_REASON
    return None


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=str, default="?", help="wall time of the run(s), for the report")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    res = results()
    counts = Counter(res.values())  # mutmut's, before the by-hand kills
    by_hand = [n for n in KILLED_BY_HAND if res.get(n) != "killed"]
    res.update({n: "killed" for n in by_hand})
    survivors = {n: s for n, s in res.items() if s in ("survived", "no tests", "timeout", "suspicious")}
    listed = {n: classify(n) for n in survivors}
    equivalent = {n: c for n, c in listed.items() if c is not None}
    open_ = sorted(n for n, c in listed.items() if c is None)
    total = len(res)
    killed = sum(1 for v in res.values() if v == "killed")
    non_eq = total - len(equivalent)
    kinds = Counter(c[0] for c in equivalent.values())
    lines = [
        "# Mutation score of the math layer (`src/ddpm/core/diffusion/*`)",
        "",
        "Command: `bench/mutation.sh` (mutmut 3, `[tool.mutmut]` in pyproject.toml: the core tests "
        "test_diffusion, test_samplers, test_solvers, test_reference_samplers, test_resample with "
        "`-m \"not slow\"`), then `python bench/mutation_report.py`. CPU, 2 workers on a shared 2-core machine; "
        f"wall time: {args.seconds}.",
        "",
        "| mutants | killed | survived, listed equivalent | survived, not equivalent | killed / non-equivalent |",
        "|---|---|---|---|---|",
        f"| {total} | {killed} | {len(equivalent)} ({', '.join(f'{k}: {v}' for k, v in sorted(kinds.items()))}) "
        f"| {len(open_)} | **{killed / non_eq:.1%}** ({killed} / {non_eq}) |",
        "",
        f"Strict score (the CPU-only and import-time mutants counted as not killed): "
        f"{killed / (total - kinds.get('equivalent', 0)):.1%}.",
        "",
        "mutmut's own counts (last run): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + (f"; {len(by_hand)} of its survivors killed since, by hand (below)." if by_hand else "."),
    ]
    per_file: dict[str, Counter] = {}
    for n, status in res.items():
        f = n.removeprefix(P).split(".")[0] + ".py"
        kind = "killed" if status == "killed" else ("equivalent" if n in equivalent else "open")
        per_file.setdefault(f, Counter())[kind] += 1
    lines += ["", "| file | mutants | killed | equivalent | open |", "|---|---|---|---|---|"]
    lines += [f"| {f} | {sum(c.values())} | {c['killed']} | {c['equivalent']} | {c['open']} |"
              for f, c in sorted(per_file.items())]
    lines += ["", NOTES.rstrip()]
    if by_hand:
        lines += ["", "## Killed after the last run (checked by hand, see KILLED_BY_HAND)", ""]
        lines += [f"* `{n.removeprefix(P)}`: {KILLED_BY_HAND[n]}" for n in by_hand]
    if open_:
        lines += ["", "## Surviving, not equivalent", ""] + [f"* `{n}`" for n in open_]
    lines += ["", "## Equivalent mutants (one line each)", "", "| mutant | kind | why it cannot be told apart |",
              "|---|---|---|"]
    for n in sorted(equivalent):
        kind, reason = equivalent[n]
        lines.append(f"| `{n.removeprefix(P)}` | {kind} | {reason} |")
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
