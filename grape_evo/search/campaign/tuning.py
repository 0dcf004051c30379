"""The learning rate of a campaign: outside the genome, tuned once on the reference.

Why not per candidate: the optimiser is Adam, which divides each update by the gradient's
running scale, so an objective whose loss is 2x larger does not learn 2x faster and its scale
is not a hidden learning rate; scoring every candidate at its best of three rates would triple
the cost of every candidate; and a learning-rate gene confounds "a better objective" with "a
better rate for this budget", which does not transfer to a user's own training. So every run
of a campaign (candidates, baselines, the reference, the re-evaluation) uses one rate: the
best of ``search.tune_lr`` multiples of ``budget.lr`` for the reference, by its mean final
held-out reward over the tasks on the first rung's seeds (lockstep batches of up to
``population`` members that differ only in the rate). The choice and every rate's score are
stored with the study (``lr``, ``lr_tuning``); the winning rate's runs are the reference's runs
on those seeds.
A space with an ``optim.lr`` axis keeps the rate in its genome and is not tuned.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import optuna

from grape_evo.objective import presets
from grape_evo.search.campaign.rungs import store_reference
from grape_evo.search.evaluator import CandidateRun

if TYPE_CHECKING:
    from grape_evo.search.campaign import Campaign

__all__ = ["TUNING_FOLDER", "tune_learning_rate"]

TUNING_FOLDER = "lr_tuning"


def tune_learning_rate(campaign: Campaign, study: optuna.Study) -> float:
    """The campaign's learning rate (tuned now, or read from the study), also set on
    ``campaign.lr``."""
    stored = study.user_attrs.get("lr")
    if stored is not None:
        campaign.lr = float(stored)
        return campaign.lr
    space = campaign.space
    budget, multiples = space.budget, space.search.tune_lr
    if space.search.reference is None or not multiples or "optim.lr" in space.paths:
        campaign.lr = budget.lr
        return campaign.lr
    rates = [budget.lr * m for m in multiples]
    seeds = range(budget.rungs[0])
    spec = presets.get(space.search.reference)
    members = [
        CandidateRun(
            spec,
            [campaign.config(s, lr=rate) for s in range(budget.seeds)],
            campaign.out_dir / TUNING_FOLDER / f"lr{rate:.3g}",
            None,
            seeds,
        )
        for rate in rates
    ]
    # rates and seeds packed into engines of at most `population` (1: one run at a time)
    results = campaign.train_runs(members)
    scores = [result.reward if result.ok else None for result in results]
    best = max(range(len(rates)), key=lambda i: -math.inf if scores[i] is None else scores[i])
    store_reference(study, results[best])
    study.set_user_attr(
        "lr_tuning", {f"{rate:.6g}": score for rate, score in zip(rates, scores, strict=True)}
    )
    study.set_user_attr("lr", rates[best])
    campaign.lr = rates[best]
    return campaign.lr
