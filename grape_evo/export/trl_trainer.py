"""GrapeGRPOTrainer: TRL 1.16's GRPOTrainer with grape's objective as its loss.

Importing this module imports TRL (an optional dependency: ``pip install 'grape-evo[bench]'``);
only the module ``grape export --to trl`` writes for a custom objective imports it.

Per rollout batch (TRL's generation batch, in ``_generate_and_score_completions``):

    R       = TRL's weighted sum of the reward functions, gathered over processes   [N]
    groups  = consecutive blocks of num_generations completions (TRL's layout), or one
              group per completion when the objective's group_size is 1
    A       = grape's advantage on the whole gathered batch: KL-in-reward shaping from the
              sampling and reference log-probs, then the estimator                  [N, T]

Per optimizer step (``_compute_loss``): grape's loss on the micro-batch from the policy's
per-token log-probs (with gradients), the sampling ("old") and reference log-probs, the
completion mask, A and the per-token entropy; an online preference objective pairs the
completions of each group present in the micro-batch. Carried state (an EMA baseline, an
adaptive KL coefficient) advances once per rollout batch, after its updates, as in grape's
trainer. Text-only models; the loss is divided by the gradient-accumulation steps like TRL's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from trl import GRPOTrainer

from grape_evo.objective import ObjectiveSpec, RolloutBatch, build_objective
from grape_evo.training.batches import online_pairs, pair_batch


class GrapeGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose loss is the grape objective ``grape_spec``.

    A generated subclass sets ``grape_spec``; ``objective=`` overrides it. The GRPOConfig must
    have ``beta > 0`` when the objective reads the reference (a KL term or a pairwise loss):
    TRL loads and scores the reference model only then.
    """

    grape_spec: ObjectiveSpec | None = None

    def __init__(self, *args: Any, objective: ObjectiveSpec | None = None, **kwargs: Any) -> None:
        spec = objective or self.grape_spec
        if spec is None:
            raise ValueError("GrapeGRPOTrainer needs an objective: set grape_spec or objective=")
        super().__init__(*args, **kwargs)
        self.grape = build_objective(spec)
        self._grape_rewards_per_func: Tensor | None = None
        self._grape_step_metrics: dict[str, float] | None = None
        reads_reference = self.grape.spec.kl.active or self.grape.preference is not None
        if reads_reference and self.beta == 0.0:
            raise ValueError(
                f"objective '{spec.name}' reads the reference policy: set beta > 0 in the "
                "GRPOConfig so that TRL scores the reference model"
            )
        if self.grape.preference is not None and (
            self.args.steps_per_generation != 1 or self.args.gradient_accumulation_steps != 1
        ):
            raise ValueError(
                "online preference pairs are formed inside a micro-batch: set "
                "steps_per_generation 1 and gradient_accumulation_steps 1"
            )

    # ---- rollout batch -----------------------------------------------------------------
    def _calculate_rewards(
        self,
        inputs: list[dict[str, Any]],
        prompts: list[Any],
        completions: list[Any],
        completion_ids_list: list[list[int]],
    ) -> Tensor:
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._grape_rewards_per_func = rewards  # [N, n_funcs], gathered over processes
        return rewards

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if self.model.training and self._grape_step_metrics is not None:
            self.grape.end_step(self._grape_step_metrics)
            self._grape_step_metrics = None
        out = super()._generate_and_score_completions(inputs)
        assert self._grape_rewards_per_func is not None
        weights = self.reward_weights.to(self._grape_rewards_per_func.device)
        rewards = (self._grape_rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        n_all, local = rewards.shape[0], out["completion_ids"].shape[0]
        ids = torch.arange(n_all, device=rewards.device)
        group_ids = ids if self.grape.spec.group_size == 1 else ids // self.num_generations
        first = self.accelerator.process_index * local
        rows = slice(first, first + local)
        out["grape_rewards"] = rewards[rows]
        out["grape_group_ids"] = group_ids[rows]
        if self.grape.preference is None:
            out["advantages"] = self._grape_advantages(out, rewards, group_ids)[rows]
        return out

    def _grape_advantages(self, out: dict[str, Any], rewards: Tensor, group_ids: Tensor) -> Tensor:
        """[N, T_local] grape advantages of the gathered batch (KL-in-reward shaping included)."""
        mask = out["completion_mask"]
        kl = self.grape.spec.kl
        if kl.active and kl.placement == "reward":
            old = out.get("old_per_token_logps")
            old = self._sampling_logps(out) if old is None else old
            ref = out["ref_per_token_logps"]
        else:  # the estimators read no log-probs
            old = ref = torch.zeros(mask.shape, device=mask.device)
        gathered = [self._gather_tokens(t) for t in (mask, old, ref)]
        batch = RolloutBatch(
            logp=gathered[1],
            old_logp=gathered[1],
            ref_logp=gathered[2],
            mask=gathered[0],
            rewards=rewards,
            group_ids=group_ids,
        )
        return self.grape.advantages(batch)[:, : mask.shape[1]]

    @torch.no_grad()
    def _sampling_logps(self, out: dict[str, Any]) -> Tensor:
        """Per-token log-probs of the completions under the policy that sampled them."""
        input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        logps, _, _ = self._get_per_token_logps_and_entropies(
            self.model,
            input_ids,
            attention_mask,
            out["completion_ids"].size(1),
            batch_size=self.args.per_device_train_batch_size,
        )
        return logps

    def _gather_tokens(self, tensor: Tensor) -> Tensor:
        """[B, T] per process -> [N, T_max] over processes (right-padded with 0)."""
        padded = self.accelerator.pad_across_processes(tensor, dim=1, pad_index=0)
        return self.accelerator.gather(padded)

    # ---- loss ----------------------------------------------------------------------------
    def _compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> Tensor:
        prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        logp, entropy, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True
        )
        mask = inputs["completion_mask"]
        old = inputs.get("old_per_token_logps")
        old = logp.detach() if old is None else old
        ref = inputs.get("ref_per_token_logps")
        ref = logp.detach() if ref is None else ref
        if self.grape.preference is not None:
            loss, metrics = self._pair_loss(logp, ref, mask, inputs)
        else:
            batch = RolloutBatch(
                logp=logp,
                old_logp=old,
                ref_logp=ref,
                mask=mask,
                rewards=inputs["grape_rewards"],
                group_ids=inputs["grape_group_ids"],
                entropy=entropy,
                advantages=inputs["advantages"],
            )
            loss, metrics = self.grape(batch)
        mode = "train" if self.model.training else "eval"
        values = {k: float(v) for k, v in metrics.items()}
        for name, value in values.items():
            self._metrics[mode][f"grape/{name}"].append(value)
        if mode == "train":
            self._grape_step_metrics = values
            loss = loss / self.current_gradient_accumulation_steps
        return loss

    def _pair_loss(
        self, logp: Tensor, ref: Tensor, mask: Tensor, inputs: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        assert self.grape.spec.preference is not None
        chosen, rejected = online_pairs(
            inputs["grape_rewards"], inputs["grape_group_ids"], self.grape.spec.preference.pairing
        )
        if chosen.numel() == 0:
            return (logp * 0.0).sum(), {"pairs": torch.zeros(())}
        pairs = pair_batch(logp, mask, (chosen.to(logp.device), rejected.to(logp.device)), ref)
        loss, metrics = self.grape(pairs)
        metrics["pairs"] = torch.tensor(float(chosen.numel()))
        return loss, metrics
