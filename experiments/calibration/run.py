"""Calibration of the claims procedure: false discoveries, power and compute per discovery.

    python experiments/calibration/run.py            # full run (README results, figure)
    python experiments/calibration/run.py --quick    # smoke run into runs/calibration-quick

Each repeat is a whole campaign (``Campaign.optimize`` then ``Campaign.reevaluate``: the Optuna
study, successive halving, the reference ledger, the fresh-seed re-evaluation and its verdicts)
in which training is replaced by a draw from a noise model measured on real runs (see
``config.yaml``): the question is the procedure's error rates at the noise our tasks have, not
what any objective does. Both procedures see the same candidates, effects and noise draws.

A *claim* is, for the paired procedure, a ``better`` verdict (paired t-interval, Bonferroni
over the candidates re-evaluated); for the first wave's, a re-evaluated mean reward above
GRPO's. A false claim names a candidate of effect 0. Writes ``calibration.csv`` (one row per
repeat), ``summary.csv``, ``calibration.png`` and the results block of ``README.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from grape_evo.analysis import figures
from grape_evo.experiment.config import ExperimentConfigError, field, load_config, parse_args
from grape_evo.experiment.report import write_results_block
from grape_evo.experiment.tables import markdown
from grape_evo.search.campaign import Campaign
from grape_evo.search.evaluator import CandidateResult, CandidateRun
from grape_evo.search.records import RunResult
from grape_evo.search.space import parse_space

HERE = Path(__file__).parent
TASK = "addition"  # a name only: nothing trains; the runs must carry the space's task


def read_config(path: Path, quick: bool) -> dict[str, Any]:
    config = load_config(path, quick)
    for name, kind in [
        ("noise", dict),
        ("candidates", list),
        ("scenarios", dict),
        ("repeats", int),
        ("procedures", dict),
        ("planted_at", float),
    ]:
        field(config, name, kind, path)  # fmt: skip
    if config["planted_at"] not in config["candidates"]:
        raise ExperimentConfigError(f"{path}: planted_at must be one of the candidates")
    for name, noise in config["noise"].items():
        if noise["paired_sd"] ** 2 / 2 > noise["unpaired_sd"] ** 2:
            raise ExperimentConfigError(f"{path}: noise.{name}: paired_sd > sqrt(2) unpaired_sd")
    return config


def normal(*parts: Any) -> float:
    """A standard normal draw determined by ``parts``."""
    digest = hashlib.sha256(json.dumps(parts, default=str).encode()).digest()
    return float(np.random.default_rng(int.from_bytes(digest[:8], "big")).standard_normal())


class NoiseModel:
    """Final reward of (objective, seed) in one repeat; ``effect`` by entropy coefficient."""

    def __init__(self, noise: dict[str, float], effect: Callable[[float], float], repeat: int):
        self.own_sd = noise["paired_sd"] / np.sqrt(2)
        self.shared_sd = float(np.sqrt(noise["unpaired_sd"] ** 2 - self.own_sd**2))
        self.warm, self.gain = noise["warm"], noise["gain"]
        self.effect, self.repeat, self.runs = effect, repeat, 0

    def train(self, runs: list[CandidateRun], *args: Any, **kwargs: Any) -> list[CandidateResult]:
        """Stands in for ``Campaign.train_runs``: one result per candidate, on its seeds."""
        return [self._candidate(r) for r in runs]

    def _candidate(self, run: CandidateRun) -> CandidateResult:
        out = []
        for i in run.seed_indices():
            seed = run.configs[i].seed
            final = (
                self.warm
                + self.gain
                + self.effect(run.spec.entropy_coef)
                + self.shared_sd * normal(self.repeat, seed)
                + self.own_sd * normal(self.repeat, seed, run.spec.key())
            )
            self.runs += 1
            out.append(
                RunResult(
                    task=TASK,
                    seed=seed,
                    status="ok",
                    reason="",
                    initial_eval={"reward": self.warm, "accuracy": 0.0, "kl_to_ref": 0.0},
                    final_eval={"reward": final, "accuracy": 0.0, "kl_to_ref": 0.0},
                    curve=[],
                    wall_seconds=0.0,
                    out_dir=str(run.folder),
                )
            )
        return CandidateResult(out)


@contextlib.contextmanager
def simulated_training(model: NoiseModel) -> Iterator[None]:
    with mock.patch.object(Campaign, "train_runs", model.train):
        yield


def space_of(config: dict[str, Any], procedure: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "calibration",
        "tasks": [TASK],
        "policy": {"preset": "tiny"},
        "budget": {"steps": 2, "eval_every": 1, "warm_start_steps": 5, **procedure["budget"]},
        "base": "grpo",
        "axes": {"entropy_coef": {"choices": config["candidates"]}},
        "baselines": ["grpo"],
        "search": {"sampler": "grid", "trials": len(config["candidates"]), "pruner": "none",
                   **procedure["search"]},
    }  # fmt: skip


def one_campaign(job: tuple[dict[str, Any], str, str, float, str, int]) -> dict[str, Any]:
    """Run one repeat of one procedure; its claims, whether the planted candidate was among
    the re-evaluated and claimed, and the runs it trained."""
    config, noise_name, scenario, effect, procedure, repeat = job
    planted = config["planted_at"]
    model = NoiseModel(
        config["noise"][noise_name],
        lambda coef: effect if coef == planted else 0.0,
        repeat,
    )
    space = parse_space(space_of(config, config["procedures"][procedure]))
    scratch = "/dev/shm" if Path("/dev/shm").is_dir() else None  # the study's commits in memory
    with tempfile.TemporaryDirectory(dir=scratch) as tmp, simulated_training(model):
        campaign = Campaign(space, Path(tmp) / "run")
        study = campaign.open(create=True)
        campaign.optimize(study, len(config["candidates"]) + 1, wait_for_running=True)
        rows = campaign.reevaluate(study)
    grpo = next(r for r in rows if r["baseline"])
    claimed = [
        r["objective"]["entropy_coef"]
        for r in rows
        if not r["baseline"]
        and (r["verdict"] == "better" if r["reference"] else r["reward"] > grpo["reward"])
    ]
    chosen = {r["objective"]["entropy_coef"] for r in rows if not r["baseline"]}
    return {
        "noise": noise_name,
        "scenario": scenario,
        "effect": effect,
        "procedure": procedure,
        "repeat": repeat,
        "runs": model.runs,
        "false_claims": sum(c != planted or effect == 0 for c in claimed),
        "planted_reevaluated": effect > 0 and planted in chosen,
        "planted_confirmed": effect > 0 and planted in claimed,
    }


def rate(k: int, n: int) -> str:
    ci = stats.binomtest(k, n).proportion_ci(method="wilson")
    return f"{k / n:.2f} [{ci.low:.2f}, {ci.high:.2f}]"


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (noise, scenario, procedure), part in frame.groupby(
        ["noise", "scenario", "procedure"], sort=False
    ):
        n, planted = len(part), bool(part["effect"].iloc[0] > 0)
        confirmed = int(part["planted_confirmed"].sum())
        rows.append(
            {
                "noise": noise,
                "scenario": scenario,
                "procedure": procedure,
                "repeats": n,
                "any false claim": rate(int((part["false_claims"] > 0).sum()), n),
                "planted re-evaluated": (
                    rate(int(part["planted_reevaluated"].sum()), n) if planted else "-"
                ),
                "power": rate(confirmed, n) if planted else "-",
                "runs per campaign": f"{part['runs'].mean():.0f}",
                "runs per confirmed discovery": (
                    f"{part['runs'].sum() / confirmed:.0f}" if planted and confirmed else "-"
                ),
            }
        )
    return pd.DataFrame(rows)


def calibration_figure(frame: pd.DataFrame) -> plt.Figure:
    """Per noise model: the false-claim rate (null) and the power (planted) per procedure."""
    noises = list(dict.fromkeys(frame["noise"]))
    fig, axes = plt.subplots(1, len(noises), figsize=(5.5 * len(noises), 3.8), squeeze=False)
    procedures = list(dict.fromkeys(frame["procedure"]))
    scenarios = list(dict.fromkeys(frame["scenario"]))
    for ax, noise in zip(axes[0], noises, strict=True):
        width = 0.8 / len(procedures)
        for i, procedure in enumerate(procedures):
            values, lows, highs = [], [], []
            for scenario in scenarios:
                part = frame[(frame["noise"] == noise) & (frame["scenario"] == scenario)
                             & (frame["procedure"] == procedure)]  # fmt: skip
                null = part["effect"].iloc[0] == 0
                hits = part["false_claims"] > 0 if null else part["planted_confirmed"]
                k, n = int(hits.sum()), len(part)
                ci = stats.binomtest(k, n).proportion_ci(method="wilson")
                values.append(k / n)
                lows.append(k / n - ci.low)
                highs.append(ci.high - k / n)
            x = np.arange(len(scenarios)) + (i - (len(procedures) - 1) / 2) * width
            ax.bar(x, values, width, yerr=[lows, highs], capsize=3, label=procedure)
        ax.axhline(0.05, color="grey", lw=0.8, ls="--")
        ax.set_xticks(np.arange(len(scenarios)))
        null = set(frame.loc[frame["effect"] == 0, "scenario"])
        names = [f"{s}\n({'false claims' if s in null else 'power'})" for s in scenarios]
        ax.set_xticklabels(names)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"noise measured on {noise}")
        ax.set_ylabel("fraction of campaigns (Wilson 95% CI)")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "runs/calibration")
    path = HERE / "config.yaml"
    try:
        config = read_config(path, args.quick)
    except ExperimentConfigError as err:
        sys.exit(f"error: {err}")
    out = args.results or (args.out / "results" if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        (config, noise, scenario, float(effect), procedure, repeat)
        for noise in config["noise"]
        for scenario, effect in config["scenarios"].items()
        for procedure in config["procedures"]
        for repeat in range(config["repeats"])
    ]
    rows = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for i, row in enumerate(pool.map(one_campaign, jobs), 1):
            rows.append(row)
            if not args.no_progress or i % 20 == 0 or i == len(jobs):
                print(f"{i}/{len(jobs)} campaigns", flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "calibration.csv", index=False)
    summary = summary_table(frame)
    summary.to_csv(out / "summary.csv", index=False)
    figures.save(calibration_figure(frame), out / "calibration.png")
    procedures = "; ".join(
        f"`{name}`: budget {p['budget']}, search {p['search']}"
        for name, p in config["procedures"].items()
    )
    text = (
        f"{config['repeats']} campaigns per cell; 8 candidates; the planted one is "
        f"`entropy_coef: {config['planted_at']}`. Procedures: {procedures}. Rates with "
        "Wilson 95% intervals.\n\n" + markdown(summary)
    )
    write_results_block(out / "README.md", text)
    print(markdown(summary))


if __name__ == "__main__":
    main()
