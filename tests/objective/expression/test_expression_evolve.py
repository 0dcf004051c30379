"""Evolution operators: valid trees within the limits, deterministic, each operator's effect."""

from __future__ import annotations

import random

import pytest

from grape_evo.objective.expression import (
    KINDS,
    MAX_NODES,
    Binary,
    Call,
    Const,
    ExpressionError,
    Var,
    check_tree,
    depth,
    parse,
    size,
    to_text,
)
from grape_evo.objective.expression.evolve import (
    EXPONENTS,
    _hoist,
    _perturb_constant,
    _replace_subtree,
    _swap_operator,
    crossover,
    mutate,
    random_tree,
)
from grape_evo.objective.expression.nodes import positions, subtree

SEEDS = {
    "advantage": "(R - mean_G)/(std_G + 1e-6)",
    "drift": "relu((r - clip(r, 0.8, 1.2))*A)",
    "preference": "-logsigmoid(rho)*(1 - sigmoid(rho/0.05)) + exp(-rho)*sigmoid(rho/0.05)",
}


def _valid(tree, kind, max_depth):
    check_tree(tree, kind, max_depth)
    assert depth(tree) <= max_depth and size(tree) <= MAX_NODES
    assert parse(to_text(tree), kind) == tree


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("max_depth", [1, 2, 3, 8])
def test_operators_give_valid_trees_within_limits(kind, max_depth):
    rng = random.Random(7)
    seed = parse(SEEDS[kind], kind)
    population = [random_tree(kind, rng, max_depth) for _ in range(30)]
    for tree in population:
        _valid(tree, kind, max_depth)
        if max_depth >= 2:
            assert depth(tree) >= 2  # never a lone leaf
    for i in range(60):
        child = mutate(population[i % 30], kind, rng, max_depth)
        _valid(child, kind, max_depth)
        mixed = crossover(child, population[(i * 7) % 30], rng, max_depth)
        _valid(mixed, kind, max_depth)
    if depth(seed) <= max_depth:
        _valid(mutate(seed, kind, rng, max_depth), kind, max_depth)


def test_random_tree_uses_the_grammar():
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        tree = random_tree("drift", rng, 6)
        for path, _ in positions(tree):
            node = subtree(tree, path)
            seen.add(node.fn if isinstance(node, Call) else type(node).__name__)
    expected = {"sqrt", "log", "exp", "abs", "relu", "sigmoid", "logsigmoid", "tanh"}
    assert expected | {"clip", "min", "max", "where", "Binary", "Unary", "Compare"} <= seen


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_given_the_generator(kind):
    def run(seed):
        rng = random.Random(seed)
        a, b = random_tree(kind, rng), random_tree(kind, rng)
        return [to_text(t) for t in (a, b, mutate(a, kind, rng), crossover(a, b, rng))]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_mutation_differs_from_its_parent():
    rng = random.Random(1)
    tree = parse(SEEDS["drift"], "drift")
    assert all(mutate(tree, "drift", rng) != tree for _ in range(50))


def test_each_mutation_operator_does_its_job():
    rng = random.Random(2)
    tree = parse("relu((r - clip(r, 0.8, 1.2))*A) + r**2", "drift")
    # constant perturbation: the same shape, exactly one number changed
    for _ in range(20):
        child = _perturb_constant(tree, "drift", rng, 8)
        # the shapes match, so the differing paths are the changed number and its ancestors
        changed = [p for p, _ in positions(tree) if subtree(tree, p) != subtree(child, p)]
        if not changed:
            continue  # a perturbation that rounded back to the same number
        leaf = subtree(child, changed[-1])
        assert isinstance(leaf, Const) and isinstance(subtree(tree, changed[-1]), Const)
        if changed[-1] == (1, 1):  # the exponent of r**2 stays an allowed exponent
            assert leaf.value in EXPONENTS
    # operator swap: the same shape, one operator or function name changed
    child = _swap_operator(parse("r + A", "drift"), "drift", rng, 8)
    assert (
        isinstance(child, Binary)
        and child.op in "-*/"
        and (child.left, child.right)
        == (
            Var("r"),
            Var("A"),
        )
    )
    assert _swap_operator(parse("min(r, A)", "drift"), "drift", rng, 8) == parse(
        "max(r, A)", "drift"
    )
    assert _swap_operator(parse("r", "drift"), "drift", rng, 8) is None
    # hoisting: a node replaced by one of its own subtrees
    hoisted = _hoist(parse("exp(r + A)", "drift"), "drift", rng, 8)
    assert hoisted in {parse(t, "drift") for t in ("r + A", "r", "A", "exp(r)", "exp(A)")}
    # subtree replacement respects the depth left at the replaced node
    for _ in range(20):
        child = _replace_subtree(tree, "drift", rng, 8)
        assert depth(child) <= 8


def test_crossover_grafts_a_subtree_of_the_other_parent():
    rng = random.Random(3)
    a, b = parse("r + A", "drift"), parse("exp(log_r)", "drift")
    donors = [parse(t, "drift") for t in ("exp(log_r)", "log_r")]
    allowed = {a_sub for a_sub in ()} | {
        t for d in donors for t in (d, Binary("+", d, Var("A")), Binary("+", Var("r"), d))
    }
    for _ in range(20):
        child = crossover(a, b, rng)
        assert child in allowed


def test_crossover_keeps_where_conditions_comparisons():
    rng = random.Random(4)
    a = parse("where(A > 0, r, 1)", "drift")
    b = parse("where(r <= 1.5, A, r)", "drift")
    for _ in range(30):
        check_tree(crossover(a, b, rng), "drift")


def test_bad_depth_is_refused():
    with pytest.raises(ExpressionError, match="max_depth"):
        random_tree("drift", random.Random(0), 0)
    with pytest.raises(ExpressionError, match="max_depth"):
        mutate(Var("r"), "drift", random.Random(0), 33)
