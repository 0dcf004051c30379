"""The data an objective consumes: rollouts (on-policy or demonstrations) and preference pairs."""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor


@dataclass(frozen=True)
class RolloutBatch:
    """B sequences of T completion tokens (right-padded).

    Shapes: ``logp``, ``old_logp``, ``ref_logp``, ``mask``: [B, T] (``mask`` is 1 on completion
    tokens, 0 on padding); ``rewards``: [B] (one outcome reward per sequence); ``group_ids``: [B]
    (sequences sampled for the same prompt share an id). Optional: ``values``: [B, T] critic
    estimates; ``token_rewards``: [B, T] per-token rewards added to the outcome reward (e.g. a
    KL-in-reward penalty); ``entropy``: [B, T] per-token policy entropy (needed only when the
    entropy bonus is on); ``advantages``: [B, T] precomputed advantages (a
    trainer that splits a batch into minibatches computes them once on the whole batch, since
    group and batch statistics must not change with the split).
    ``generation_budget``: the most completion tokens the sampler could draw per sequence
    (``max_new_tokens``; 0 = unknown). T can be shorter (sampling stops once every row has
    finished); the built objective pads the loss to this width before aggregating, so a
    constant-length normaliser (``seq_mean_token_sum_norm``) divides by the budget, not by T.
    ``logp`` carries gradients; the others are treated as constants.
    """

    logp: Tensor
    old_logp: Tensor
    ref_logp: Tensor
    mask: Tensor
    rewards: Tensor
    group_ids: Tensor
    values: Tensor | None = None
    token_rewards: Tensor | None = None
    entropy: Tensor | None = None
    advantages: Tensor | None = None
    generation_budget: int = 0

    def with_(self, **changes: object) -> RolloutBatch:
        """A copy with some fields replaced."""
        return replace(self, **changes)


@dataclass(frozen=True)
class PreferenceBatch:
    """B preference pairs, each log-probability summed over the completion's tokens.

    Shapes: ``chosen_logp``, ``rejected_logp`` (policy, with gradients), ``ref_chosen_logp``,
    ``ref_rejected_logp`` (reference, constants), ``chosen_len``, ``rejected_len`` (token counts,
    float): all [B].
    """

    chosen_logp: Tensor
    rejected_logp: Tensor
    ref_chosen_logp: Tensor
    ref_rejected_logp: Tensor
    chosen_len: Tensor
    rejected_len: Tensor
