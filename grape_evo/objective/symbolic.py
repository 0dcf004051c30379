"""Shared sympy vocabulary for the symbolic form of every component.

Each registered component declares a function returning a sympy expression built from the
symbols below; :meth:`ObjectiveSpec.to_sympy` composes them the same way the tensor builder
composes the tensor functions. Notation (sequence i, token t):

``R`` outcome reward R_i; ``mu_G``, ``sigma_G``, ``G`` mean, std and size of i's group;
``mu_B``, ``sigma_B`` batch statistics (of R; ``mean_G(x)``, ``std_B(x)`` those of another
per-sequence quantity x); ``N_sel`` the tokens of the selected (best-of-group) sequences;
``b`` a running baseline; ``V`` the critic value V_t;
``logp``, ``logp_old``, ``logp_ref`` log pi_theta, log pi_old, log pi_ref of token t;
``d`` = logp - logp_ref, the per-token log-ratio to the reference;
``ratio`` r_{i,t} = pi_theta / pi_old; ``seq_ratio`` s_i, GSPO's length-normalised sequence
ratio; ``H`` the token entropy. Preference pairs: ``logp_w``, ``logp_l`` (policy, chosen /
rejected, summed over tokens), ``delta_w``, ``delta_l`` (their log-ratios to the reference),
``len_w``, ``len_l`` (lengths). Expression components add ``min_G``, ``max_G``, ``rank_G``
(rank in [0, 1]), ``p_G`` (fraction of the group with reward > 0), a generic advantage ``A``
and a symbolic ``beta``.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.latex import LatexPrinter


class clip(sp.Function):
    """clip(x, lo, hi) = min(max(x, lo), hi)."""

    nargs = 3

    @classmethod
    def eval(cls, x: sp.Expr, lo: sp.Expr, hi: sp.Expr) -> sp.Expr | None:
        if all(a.is_number for a in (x, lo, hi)):
            return sp.Min(sp.Max(x, lo), hi)
        return None

    def _latex(self, printer: LatexPrinter) -> str:
        x, lo, hi = (printer._print(a) for a in self.args)
        return rf"\operatorname{{clip}}\left({x},\,{lo},\,{hi}\right)"


class sg(sp.Function):
    """Stop-gradient: the value of x, treated as a constant."""

    nargs = 1

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        return x if x.is_number else None

    def _latex(self, printer: LatexPrinter) -> str:
        return rf"\operatorname{{sg}}\left[{printer._print(self.args[0])}\right]"


class sigmoid(sp.Function):
    """The logistic function 1 / (1 + exp(-x))."""

    nargs = 1

    @classmethod
    def eval(cls, x: sp.Expr) -> sp.Expr | None:
        return 1 / (1 + sp.exp(-x)) if x.is_number else None

    def _latex(self, printer: LatexPrinter) -> str:
        return rf"\sigma\left({printer._print(self.args[0])}\right)"


class relu(sp.Function):
    nargs = 1

    def _latex(self, printer: LatexPrinter) -> str:
        return rf"\left[{printer._print(self.args[0])}\right]_+"


class where(sp.Function):
    """where(condition, a, b): a when the condition holds, else b.

    Used instead of sympy's Piecewise, whose LaTeX (a cases environment) matplotlib's
    mathtext cannot render.
    """

    nargs = 3

    @classmethod
    def eval(cls, condition: sp.Basic, a: sp.Expr, b: sp.Expr) -> sp.Expr | None:
        if condition is sp.true:
            return a
        if condition is sp.false:
            return b
        return None

    def _latex(self, printer: LatexPrinter) -> str:
        c, a, b = (printer._print(x) for x in self.args)
        return rf"\left\{{{a}\ \mathrm{{if}}\ {c};\ {b}\ \mathrm{{else}}\right."


class rank(sp.Function):
    """Average rank (0-based) of R_i within its group."""

    nargs = 1

    def _latex(self, printer: LatexPrinter) -> str:
        return rf"\operatorname{{rank}}_G\left({printer._print(self.args[0])}\right)"


class is_group_max(sp.Function):
    """1 when R_i is the maximum of its group, else 0."""

    nargs = 1

    def _latex(self, printer: LatexPrinter) -> str:
        return rf"\mathbb{{1}}\left[{printer._print(self.args[0])} = \max_G R\right]"


class whiten_B(sp.Function):
    """Standardise over every valid token of the batch: (x - mean_B x) / std_B x."""

    nargs = 1

    def _latex(self, printer: LatexPrinter) -> str:
        return rf"\operatorname{{whiten}}_B\left({printer._print(self.args[0])}\right)"


class mean_G(sp.Function):
    """Mean of a per-sequence quantity over sequence i's group."""

    nargs = 1

    def _latex(self, printer: LatexPrinter) -> str:
        return rf"\operatorname{{mean}}_G\left({printer._print(self.args[0])}\right)"


class std_B(sp.Function):
    """Std of a per-sequence quantity over every sequence of the batch."""

    nargs = 1

    def _latex(self, printer: LatexPrinter) -> str:
        return rf"\operatorname{{std}}_B\left({printer._print(self.args[0])}\right)"


_LATEX_NAMES: dict[sp.Symbol, str] = {}


def _sym(name: str, latex: str, **assumptions: bool) -> sp.Symbol:
    symbol = sp.Symbol(name, **assumptions)
    _LATEX_NAMES[symbol] = latex
    return symbol


class Symbols:
    """The symbols shared by all components (a namespace, not instantiated)."""

    R = _sym("R", "R_i", real=True)
    mu_G = _sym("mu_G", r"\mu_G", real=True)
    sigma_G = _sym("sigma_G", r"\sigma_G", nonnegative=True)
    G = _sym("G", "G", positive=True, integer=True)
    n_max = _sym("n_max", r"n_{\max}", positive=True, integer=True)
    mu_B = _sym("mu_B", r"\mu_B", real=True)
    sigma_B = _sym("sigma_B", r"\sigma_B", nonnegative=True)
    b = _sym("b", "b", real=True)
    V = _sym("V", "V_t", real=True)
    logp = _sym("logp", r"\log\pi_\theta", real=True)
    logp_old = _sym("logp_old", r"\log\pi_{\mathrm{old}}", real=True)
    logp_ref = _sym("logp_ref", r"\log\pi_{\mathrm{ref}}", real=True)
    d = _sym("d", "d_{i,t}", real=True)
    d_s = _sym("d_s", "d_{i,s}", real=True)
    ratio = _sym("r", "r_{i,t}", positive=True)
    seq_ratio = _sym("s", "s_i", positive=True)
    H = _sym("H", r"\mathcal{H}_t", nonnegative=True)
    beta_kl = _sym("beta_kl", r"\beta_{\mathrm{KL}}", positive=True)
    logp_w = _sym("logp_w", r"\log\pi_\theta(y_w)", real=True)
    logp_l = _sym("logp_l", r"\log\pi_\theta(y_l)", real=True)
    delta_w = _sym("delta_w", r"\Delta_w", real=True)
    delta_l = _sym("delta_l", r"\Delta_l", real=True)
    len_w = _sym("len_w", "|y_w|", positive=True)
    len_l = _sym("len_l", "|y_l|", positive=True)
    # inputs of expression components (grape_evo.objective.expression)
    min_G = _sym("min_G", r"R^{\min}_G", real=True)
    max_G = _sym("max_G", r"R^{\max}_G", real=True)
    rank_G = _sym("rank_G", r"\mathrm{rank}_G", nonnegative=True)
    p_G = _sym("p_G", "p_G", nonnegative=True)
    A = _sym("A", "A_{i,t}", real=True)
    beta = _sym("beta", r"\beta", positive=True)
    # indices and sizes for aggregation sums
    i = _sym("i", "i", integer=True, positive=True)
    t = _sym("t", "t", integer=True, positive=True)
    s = _sym("s", "s", integer=True, positive=True)
    B = _sym("B", "B", positive=True, integer=True)
    len_i = _sym("len_i", "|o_i|", positive=True, integer=True)
    N = _sym("N", r"N_{\mathrm{tok}}", positive=True, integer=True)
    N_sel = _sym("N_sel", r"N_{\mathrm{sel}}", positive=True)


def num(x: float | int) -> sp.Expr:
    """A parameter value as a sympy number (floats kept readable)."""
    if isinstance(x, bool):
        return sp.Integer(int(x))
    if isinstance(x, int) or float(x).is_integer():
        return sp.Integer(int(x))
    return sp.Float(x)


def to_latex(expr: sp.Expr) -> str:
    return sp.latex(expr, symbol_names=_LATEX_NAMES)
