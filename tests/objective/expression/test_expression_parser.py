"""Parsing formulas: the typed tree, the whitelist, the limits, and the text round trip."""

from __future__ import annotations

import builtins
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grape_evo.objective import ObjectiveError
from grape_evo.objective.expression import (
    INPUTS,
    KINDS,
    Binary,
    Call,
    Compare,
    Const,
    ExpressionError,
    Unary,
    Var,
    check_tree,
    compile_tree,
    depth,
    parse,
    size,
    to_text,
    variables,
)
from grape_evo.objective.expression.evolve import random_tree
from grape_evo.objective.expression.nodes import MAX_DEPTH, MAX_NODES

r, A, log_r = Var("r"), Var("A"), Var("log_r")


# ---- the tree of valid formulas ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("r", r),
        ("2", Const(2.0)),
        ("-0.5", Const(-0.5)),  # a negated number is a constant
        ("+r", r),
        ("-r", Unary("-", r)),
        ("-(-r)", Unary("-", Unary("-", r))),
        ("r - -1", Binary("-", r, Const(-1.0))),
        ("r*A", Binary("*", r, A)),
        ("r - A - 1", Binary("-", Binary("-", r, A), Const(1.0))),
        ("r - (A - 1)", Binary("-", r, Binary("-", A, Const(1.0)))),
        ("-r**2", Unary("-", Binary("**", r, Const(2.0)))),  # ** binds tighter than -
        ("(-r)**2", Binary("**", Unary("-", r), Const(2.0))),
        ("r**-0.5", Binary("**", r, Const(-0.5))),
        ("r ** 4", Binary("**", r, Const(4.0))),
        ("1e-6", Const(1e-6)),
        ("clip(r, 0.8, 1.2)", Call("clip", (r, Const(0.8), Const(1.2)))),
        ("min(r, A)", Call("min", (r, A))),
        ("logsigmoid(log_r)", Call("logsigmoid", (log_r,))),
        ("where(A > 0, r, 1)", Call("where", (Compare(">", A, Const(0.0)), r, Const(1.0)))),
        (
            "where(r <= A*2, r, A)",
            Call("where", (Compare("<=", r, Binary("*", A, Const(2.0))), r, A)),
        ),
    ],
)
def test_parse_gives_the_typed_tree(text, tree):
    assert parse(text, "drift") == tree


def test_every_function_and_input_parses():
    for kind in KINDS:
        for name in INPUTS[kind]:
            assert parse(name, kind) == Var(name)
    text = (
        "sqrt(r) + log(r) + exp(r) + abs(r) + relu(r) + sigmoid(r) + logsigmoid(r) + tanh(r)"
        " + clip(r, 0, 1) + min(r, 1) + max(r, 1) + where(r < 1, r, 1) + where(r >= 1, 1, r)"
    )
    tree = parse(text, "drift")
    assert variables(tree) == {"r"}


def test_tree_is_frozen_and_hashable():
    tree = parse("relu((r - clip(r, 0.8, 1.2))*A)", "drift")
    assert hash(tree) == hash(parse("relu((r - clip(r, 0.8, 1.2)) * A)", "drift"))
    with pytest.raises(AttributeError):
        tree.fn = "exp"  # type: ignore[misc]


def test_depth_and_size_by_hand():
    # relu -> * -> - -> clip -> r : 5 levels; nodes relu, *, -, r, clip, r, 0.8, 1.2, A = 9
    tree = parse("relu((r - clip(r, 0.8, 1.2))*A)", "drift")
    assert depth(tree) == 5
    assert size(tree) == 9


# ---- hostile input: refused with one clear line, nothing runs --------------------------------
HOSTILE = [
    ("os", "name 'os' is not an input of drift expressions (inputs: r, log_r, A)"),
    ("R", "name 'R' is not an input of drift expressions"),
    ("__import__('os')", 'character "\'"'),
    ('__import__("os").system("true")', "character '\"'"),
    ("__import__(os)", "function '__import__' is not allowed"),
    ("r.__class__", "attribute access"),
    ("r.real", "attribute access"),
    ("eval(r)", "function 'eval' is not allowed"),
    ("exec(r)", "function 'exec' is not allowed"),
    ("foo(r)", "function 'foo' is not allowed"),
    ("lambda: r", "character ':'"),
    ("[x for x in r]", "character '['"),
    ("sum(x for x in r)", "function 'sum' is not allowed"),
    ("exp(x for x in r)", "comprehensions are not allowed"),
    ("r[0]", "character '['"),
    ("{r}", "character '{'"),
    ("clip(r, lo=0.8, hi=1.2)", "keyword arguments are not allowed in clip(...)"),
    ("exp(*r)", "starred arguments are not allowed"),
    ("(r, A)", "tuples are not allowed"),
    ("r if A else 1", "use where(c, x, y)"),
    ("r and A", "'and'/'or' are not allowed"),
    ("not r", "operator 'not' is not allowed"),
    ("r > 1", "comparisons are allowed only as the first argument of where"),
    ("where(r, 1, 2)", "the first argument of where(...) must be a comparison"),
    ("where(r == 1, 1, 2)", "comparison '==' is not allowed"),
    ("where(0 < r < 1, 1, 2)", "chained comparisons"),
    ("r // 2", "operator '//' is not allowed"),
    ("r**1000", "an exponent must be a number with |p| <= 4"),
    ("r**A", "the exponent of '**' must be a number"),
    ("r**(1+1)", "the exponent of '**' must be a number"),
    ("1e400", "constant inf must be a finite float"),
    ("1e7", "|c| <= 1e+06"),
    ("True", "'True' is not a real number"),
    ("1j", "'1j' is not a real number"),
    ("exp(r, A)", "exp() takes 1 argument(s), got 2"),
    ("clip(r, 1)", "clip() takes 3 argument(s), got 2"),
    ("ｒ", "U+FF52"),  # full-width r: Python would NFKC-normalise it into the name r
    ("r\u00a0+ A", "U+00A0"),  # a non-breaking space
    ("r;A", "character ';'"),
    ("r +", "invalid syntax"),
    ("(r", "unbalanced '('"),
    ("r)", "unbalanced ')'"),
    ("", "expression is empty"),
    ("(" * 999 + "r" + ")" * 999, "brackets nested more than 64 deep"),
    ("(" * 10000 + "r" + ")" * 10000, "expression is 20001 characters long (limit 2000)"),
    ("(" * 10000, "expression is 10000 characters long"),
    ("r" * 1_000_000, "expression is 1000000 characters long (limit 2000)"),
    ("-" * 1999 + "r", "more than 32 levels deep"),
    ("r" + "+r" * 900, "more than 32 levels deep"),
]


@pytest.mark.parametrize(("text", "needle"), HOSTILE, ids=[t[:20] for t, _ in HOSTILE])
def test_hostile_input_is_refused_with_a_clear_line(text, needle):
    with pytest.raises(ExpressionError) as info:
        parse(text, "drift")
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
    assert len(message) < 300  # never echoes a megabyte
    assert isinstance(info.value, ObjectiveError)


def test_non_string_is_refused():
    with pytest.raises(ExpressionError, match="must be a string"):
        parse(3.0, "drift")  # type: ignore[arg-type]


def test_nothing_is_evaluated(monkeypatch, tmp_path):
    """Parsing, compiling and evaluating never call eval or exec; a side effect in the text
    never runs."""
    ones, zeros = torch.ones(2), torch.zeros(2)
    env = {"r": ones, "log_r": zeros, "A": ones}
    compile_tree(parse("exp(log_r)*A", "drift"), "drift")(env)  # warm up torch's lazy imports

    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    marker = tmp_path / "pwned"
    with pytest.raises(ExpressionError):
        parse(f"__import__('os').system('touch {marker}')", "drift")
    assert not marker.exists()
    out = compile_tree(parse("exp(log_r)*A - r*A + 2", "drift"), "drift")(env)
    assert out.tolist() == [2.0, 2.0]


def test_limits_are_enforced():
    nested = "r"
    for _ in range(MAX_DEPTH - 1):
        nested = f"exp({nested})"
    assert depth(parse(nested, "drift")) == MAX_DEPTH
    with pytest.raises(ExpressionError, match=f"nested {MAX_DEPTH + 1} deep"):
        parse(f"exp({nested})", "drift")
    with pytest.raises(ExpressionError, match="nested 9 deep \\(limit 8\\)"):
        parse("exp(" * 8 + "r" + ")" * 8, "drift", max_depth=8)
    # a balanced sum of 2^8 = 256 leaves has 511 nodes, 9 levels
    tree = r
    for _ in range(8):
        tree = Binary("+", tree, tree)
    text = to_text(tree)
    assert len(text) < 2000
    with pytest.raises(ExpressionError, match=f"511 nodes \\(limit {MAX_NODES}\\)"):
        parse(text, "drift")


def test_check_tree_refuses_hand_built_invalid_trees():
    with pytest.raises(ExpressionError, match="not an input"):
        check_tree(Var("x"), "drift")
    with pytest.raises(ExpressionError, match="exponent"):
        check_tree(Binary("**", r, Const(5.0)), "drift")
    with pytest.raises(ExpressionError, match="exponent"):
        check_tree(Binary("**", r, A), "drift")
    with pytest.raises(ExpressionError, match="negated number"):
        check_tree(Unary("-", Const(1.0)), "drift")
    with pytest.raises(ExpressionError, match="comparisons are allowed only"):
        check_tree(Compare(">", r, A), "drift")
    with pytest.raises(ExpressionError, match="must be a comparison"):
        check_tree(Call("where", (r, r, A)), "drift")
    with pytest.raises(ExpressionError, match="function 'eval'"):
        check_tree(Call("eval", (r,)), "drift")
    with pytest.raises(ExpressionError, match="finite"):
        check_tree(Const(float("nan")), "drift")
    with pytest.raises(ExpressionError, match="unknown expression kind"):
        check_tree(r, "value")


# ---- text round trip ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "r - (A - 1)",
        "r + (A + 1)",
        "(r + A) * 2",
        "-r**2",
        "(-r)**2",
        "(-2)**2",
        "r**(-1)",
        "r * -1",
        "-(r * A)",
        "(r / A) / 2",
        "r / (A / 2)",
        "1e-06 + 0.1",
        "where(r - 1 > A, min(r, A), clip(-r, -1, 1))",
    ],
)
def test_to_text_round_trips_hand_cases(text):
    tree = parse(text, "drift")
    assert parse(to_text(tree), "drift") == tree
    assert to_text(parse(to_text(tree), "drift")) == to_text(tree)


def test_to_text_writes_minimal_brackets():
    assert to_text(parse("((r) - ((A)))*(2)", "drift")) == "(r - A) * 2"
    assert to_text(parse("r - (A - 1)", "drift")) == "r - (A - 1)"
    assert to_text(parse("(r - A) - 1", "drift")) == "r - A - 1"
    assert to_text(Binary("**", Unary("-", r), Const(-1.0))) == "(-r)**(-1)"


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(KINDS), max_depth=st.integers(1, 10))
def test_random_trees_round_trip_through_text(seed, kind, max_depth):
    tree = random_tree(kind, random.Random(seed), max_depth)
    assert parse(to_text(tree), kind) == tree
