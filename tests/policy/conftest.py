"""Shared fixtures for policy tests: a char tokenizer, tiny policies, an EOS-bias hook, one
torch thread (the tiny models are fastest that way on a shared machine)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from grape_evo.policy import CharTokenizer, Policy, PolicyConfig, build_policy


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tok() -> CharTokenizer:
    return CharTokenizer()


@pytest.fixture
def make_policy(tok: CharTokenizer) -> Callable[..., Policy]:
    def _make(seed: int = 0, **kwargs: object) -> Policy:
        return build_policy(PolicyConfig(**kwargs), tok, seed=seed)  # type: ignore[arg-type]

    return _make


def _add_eos_bias(policy: Policy, eos_id: int, bias: float) -> torch.utils.hooks.RemovableHandle:
    """Add `bias` to the EOS logit of every forward of the policy's LM head (a forward hook:
    the policy then runs the transformers forward, not the stacked fast path)."""
    head = policy.hf_model.get_output_embeddings()

    def hook(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        out[..., eos_id] += bias
        return out

    return head.register_forward_hook(hook)


@pytest.fixture
def eos_bias() -> Callable[[Policy, int, float], torch.utils.hooks.RemovableHandle]:
    """A function that makes EOS more likely (so completions end early and get padded)."""
    return _add_eos_bias
