"""The published forms of each expression kind, by name: the seeds of a formula axis and the
yardsticks a discovered formula is compared with.

Each is the paper's function written over the kind's inputs (tests check each against the
registered component it equals, where there is one).
"""

from __future__ import annotations

__all__ = ["PUBLISHED", "published_forms"]

PUBLISHED: dict[str, dict[str, str]] = {
    "advantage": {
        # Shao et al. 2024 (GRPO), with the population std
        "GRPO": "(R - mean_G)/(std_G + 1e-6)",
        # Liu et al. 2025 (Dr. GRPO): no std normalisation
        "Dr. GRPO": "R - mean_G",
        # Ahmadian et al. 2024 (RLOO): R_i minus the mean of the other G - 1 rewards
        "RLOO": "(R - mean_G)*G/(G - 1)",
        # Williams 1992 (REINFORCE) without a baseline
        "REINFORCE": "R",
    },
    "drift": {
        # Schulman et al. 2017 (PPO-clip, epsilon 0.2) as a drift (Lu et al. 2022, eq. 6)
        "PPO-clip": "relu((r - clip(r, 0.8, 1.2))*A)",
        # the plain importance-sampled surrogate r A
        "ratio": "0",
        # Lu et al. 2022 (LPO's discovered drift, alpha 2 for A >= 0, beta 0.6 for A < 0)
        "LPO": (
            "where(A >= 0, relu((r - 1)*A - 2*tanh((r - 1)*A/2)),"
            " relu(log_r*A - 0.6*tanh(log_r*A/0.6)))"
        ),
    },
    "preference": {
        # Rafailov et al. 2023 (DPO)
        "DPO": "-logsigmoid(rho)",
        # Chan et al. 2024 (DiscoPOP / LRML, tau 0.05)
        "DiscoPOP": "-logsigmoid(rho)*(1 - sigmoid(rho/0.05)) + exp(-rho)*sigmoid(rho/0.05)",
        # Zhao et al. 2023 (SLiC hinge)
        "hinge": "relu(1 - rho)",
        # Azar et al. 2023 (IPO): (h - 1/(2 beta))^2 with h the log-ratio difference rho/beta
        "IPO": "(rho/beta - 1/(2*beta))**2",
    },
}
"""Expression kind -> published name -> formula."""


def published_forms(kind: str) -> tuple[str, ...]:
    """The published formulas of ``kind``, in :data:`PUBLISHED` order."""
    return tuple(PUBLISHED[kind].values())
