"""ObjectiveSpec: round trips, validation errors, canonical form and keys."""

from __future__ import annotations

import math

import pytest

from grape_evo.objective import ObjectiveError, ObjectiveSpec, presets
from grape_evo.objective.registry import ADVANTAGES, SURROGATES, Registry

GRPO = {
    "name": "grpo",
    "data": "on_policy",
    "group_size": 8,
    "advantage": {"name": "group_zscore", "eps": 1.0e-6},
    "surrogate": {"name": "ppo_clip", "clip_low": 0.2, "clip_high": 0.2},
    "kl": {"estimator": "k3", "placement": "loss", "coef": 0.04},
    "aggregation": {"name": "seq_mean_token_mean"},
    "entropy_coef": 0.0,
    "preference": None,
    "epochs": 1,
}

SAMPLES = [
    GRPO,
    {},
    {"name": "dormant", "surrogate": {"name": "reinforce", "clip_high": 0.3, "clip_low": 0.1}},
    {"data": "preference_pairs", "preference": {"name": "ipo", "beta": 0.3}},
    {"group_size": 4, "preference": {"name": "sigmoid", "beta": 0.2, "pairing": "all_pairs"}},
    {"data": "demonstrations", "advantage": "none", "entropy_coef": 0.01, "epochs": 3},
    {
        "group_size": 2,
        "advantage": {"name": "rloo"},
        "kl": {"estimator": "k1", "placement": "reward", "coef": 0.05},
        "surrogate": {"name": "kl_penalty", "beta": 0.5, "adaptive": False},
    },
]


def _spec(**changes):
    return ObjectiveSpec.from_dict({**GRPO, **changes})


def _raises(d, *needles):
    with pytest.raises(ObjectiveError) as info:
        ObjectiveSpec.from_dict(d)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# ---- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("d", SAMPLES)
def test_dict_round_trip(d):
    s = ObjectiveSpec.from_dict(d)
    assert ObjectiveSpec.from_dict(s.to_dict()) == s
    assert ObjectiveSpec.from_dict(s.to_dict()).to_dict() == s.to_dict()


def test_to_dict_keeps_written_values_and_fills_defaults():
    d = ObjectiveSpec.from_dict(GRPO).to_dict()
    assert set(d) == set(GRPO) | {"minibatches", "staleness"}  # the regime, filled in
    assert (d["minibatches"], d["staleness"]) == (1, 0)
    for key, value in GRPO.items():
        if isinstance(value, dict):
            # components come back with every written parameter (defaults filled in)
            assert d[key].items() >= value.items(), key
        else:
            assert d[key] == value, key
    assert d["surrogate"]["dual_clip"] == 0.0  # ppo_clip's default, filled in


def test_regime_fields_validate_canonicalise_and_key() -> None:
    grpo = ObjectiveSpec.from_dict(GRPO)
    stale = ObjectiveSpec.from_dict({**GRPO, "minibatches": 4, "staleness": 2})
    assert (stale.minibatches, stale.staleness) == (4, 2)
    assert stale.key() != grpo.key()  # a regime other than 1 x 1, fresh changes the key
    assert ObjectiveSpec.from_dict({**GRPO, "minibatches": 1, "staleness": 0}).key() == grpo.key()
    for field, bad in (
        ("minibatches", 0),
        ("staleness", -1),
        ("minibatches", 65),
        ("staleness", 1.5),
    ):
        with pytest.raises(ObjectiveError, match=f"field '{field}'"):
            ObjectiveSpec.from_dict({**GRPO, field: bad})
    # Only sampled data can be stale; a trust-region step uses the whole batch once.
    offline = ObjectiveSpec.from_dict({**presets.describe("dpo").spec, "staleness": 3})
    assert offline.canonical().staleness == 0
    trpo = ObjectiveSpec.from_dict({**presets.describe("trpo").spec, "minibatches": 4})
    assert (trpo.canonical().epochs, trpo.canonical().minibatches) == (1, 1)


def test_default_spec_round_trip():
    s = ObjectiveSpec()
    assert ObjectiveSpec.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("name", presets.names())
def test_preset_round_trip(name):
    s = presets.get(name)
    assert ObjectiveSpec.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("d", SAMPLES)
def test_yaml_round_trip(tmp_path, d):
    s = ObjectiveSpec.from_dict(d)
    path = tmp_path / "objective.yaml"
    path.write_text(s.to_yaml())
    assert ObjectiveSpec.from_yaml(path) == s
    assert ObjectiveSpec.from_yaml(str(path)) == s


def test_from_yaml_hand_written(tmp_path):
    path = tmp_path / "grpo.yaml"
    path.write_text(
        "name: grpo\n"
        "data: on_policy\n"
        "group_size: 8\n"
        "advantage: {name: group_zscore, eps: 1.0e-6}\n"
        "surrogate: {name: ppo_clip, clip_low: 0.2, clip_high: 0.2}\n"
        "kl: {estimator: k3, placement: loss, coef: 0.04}\n"
        "aggregation: {name: seq_mean_token_mean}\n"
        "entropy_coef: 0.0\n"
        "preference: null\n"
        "epochs: 1\n"
    )
    assert ObjectiveSpec.from_yaml(path) == ObjectiveSpec.from_dict(GRPO)


def test_dormant_params_kept_by_to_dict():
    s = ObjectiveSpec.from_dict({"surrogate": {"name": "reinforce", "clip_high": 0.3}})
    assert s.to_dict()["surrogate"] == {"name": "reinforce", "clip_high": 0.3}


# ---- errors -------------------------------------------------------------------------------


def test_unknown_component_lists_valid_names():
    msg = _raises({"surrogate": {"name": "ppo_clipp"}}, "surrogate", "ppo_clipp")
    for valid in SURROGATES.names():
        assert valid in msg
    msg = _raises({"advantage": "zscore"}, "advantage", "zscore")
    for valid in ADVANTAGES.names():
        assert valid in msg
    _raises({"aggregation": "mean"}, "aggregation", "token_mean", "seq_mean_token_mean")
    _raises({"kl": {"estimator": "k4", "coef": 0.1}}, "kl", "k4", "k1", "k2", "k3", "abs")
    _raises(
        {"data": "preference_pairs", "preference": {"name": "dpo"}},
        "preference",
        "dpo",
        "sigmoid",
        "hinge",
    )


def test_unknown_parameter_names_component_and_parameter():
    msg = _raises({"surrogate": {"name": "ppo_clip", "clip_hgh": 0.3}}, "ppo_clip", "clip_hgh")
    # the valid parameters are listed too
    assert "clip_high" in msg and "clip_low" in msg
    _raises({"advantage": {"name": "group_zscore", "epsilon": 1e-6}, "group_size": 4}, "epsilon")


def test_unknown_top_level_and_kl_fields():
    _raises({"surogate": "reinforce"}, "surogate", "surrogate")
    _raises({"kl": {"coeff": 0.1}}, "coeff", "coef")
    _raises({"data": "offline"}, "data", "offline", "on_policy", "preference_pairs")
    _raises({"kl": {"placement": "advantage", "coef": 0.1}}, "kl.placement", "reward")


@pytest.mark.parametrize(
    ("d", "needles"),
    [
        ({"surrogate": {"name": "ppo_clip", "clip_low": 1.5}}, ("clip_low", "1.5")),
        ({"surrogate": {"name": "ppo_clip", "clip_high": -0.1}}, ("clip_high",)),
        ({"group_size": 0}, ("group_size", "0")),
        ({"kl": {"coef": -1}}, ("kl.coef", "-1")),
        ({"epochs": 0}, ("epochs",)),
        ({"entropy_coef": -0.5}, ("entropy_coef",)),
        ({"surrogate": {"name": "ppo_clip", "clip_low": math.nan}}, ("clip_low", "nan")),
        ({"kl": {"coef": math.nan}}, ("kl.coef",)),
        ({"entropy_coef": math.inf}, ("entropy_coef",)),
        ({"surrogate": {"name": "reinforce", "clip_high": -3.0}}, ("clip_high",)),
        ({"surrogate": {"name": "ppo_clip", "dual_clip": 0.5}}, ("dual_clip",)),
    ],
)
def test_out_of_range(d, needles):
    _raises(d, *needles)


@pytest.mark.parametrize(
    ("d", "needles"),
    [
        ({"group_size": "8"}, ("group_size", "'8'")),
        ({"epochs": 1.5}, ("epochs", "1.5")),
        ({"group_size": True}, ("group_size",)),
        ({"kl": {"coef": "0.1"}}, ("kl.coef",)),
        ({"name": 3}, ("name",)),
        ({"advantage": {"name": "gae", "whiten": 1}}, ("whiten",)),
        ({"surrogate": {"name": "ppo_clip", "clip_low": "0.2"}}, ("clip_low",)),
        ({"surrogate": 3}, ("surrogate",)),
        ({"kl": [0.1]}, ("kl",)),
    ],
)
def test_wrong_types(d, needles):
    _raises(d, *needles)


def test_integral_float_accepted_for_int_fields():
    assert ObjectiveSpec.from_dict({"epochs": 2.0}).epochs == 2
    assert isinstance(ObjectiveSpec.from_dict({"epochs": 2.0}).epochs, int)


def test_incoherent_combinations_name_both_fields():
    _raises({"data": "preference_pairs"}, "data", "preference", "preference_pairs")
    _raises(
        {"data": "demonstrations", "preference": {"name": "sigmoid"}},
        "data",
        "preference",
        "demonstrations",
    )
    _raises({"advantage": "group_zscore", "group_size": 1}, "advantage", "group_size")
    _raises({"preference": {"name": "sigmoid"}, "group_size": 1}, "preference", "group_size")
    # the same advantage with a real group is fine
    assert ObjectiveSpec.from_dict({"advantage": "group_zscore", "group_size": 2}).group_size == 2


def test_non_mapping_spec():
    with pytest.raises(ObjectiveError, match="mapping"):
        ObjectiveSpec.from_dict([1, 2])  # type: ignore[arg-type]


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad_syntax.yaml"
    bad.write_text("name: x\nsurrogate: {name: ppo_clip, clip_low: [\n")
    with pytest.raises(ObjectiveError, match=r"bad_syntax\.yaml"):
        ObjectiveSpec.from_yaml(bad)

    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ObjectiveError, match=r"nowhere\.yaml"):
        ObjectiveSpec.from_yaml(missing)

    top = tmp_path / "top_list.yaml"
    top.write_text("- name: grpo\n- name: dpo\n")
    with pytest.raises(ObjectiveError, match=r"top_list\.yaml"):
        ObjectiveSpec.from_yaml(top)

    invalid = tmp_path / "invalid_value.yaml"
    invalid.write_text("group_size: 0\n")
    with pytest.raises(ObjectiveError) as info:
        ObjectiveSpec.from_yaml(invalid)
    assert "invalid_value.yaml" in str(info.value) and "group_size" in str(info.value)


# ---- canonical form and keys --------------------------------------------------------------


def test_dormant_clip_of_reinforce_same_key():
    a = ObjectiveSpec.from_dict({"surrogate": {"name": "reinforce", "clip_high": 0.3}})
    b = ObjectiveSpec.from_dict({"surrogate": {"name": "reinforce", "clip_high": 0.28}})
    c = ObjectiveSpec.from_dict({"surrogate": "reinforce"})
    assert a != b
    assert a.key() == b.key() == c.key()


def test_name_does_not_change_key():
    assert _spec(name="a").key() == _spec(name="something else").key()


def test_zero_kl_estimator_irrelevant():
    keys = {
        _spec(kl={"estimator": est, "placement": place, "coef": 0.0}).key()
        for est in ("k1", "k2", "k3", "abs")
        for place in ("loss", "reward")
    }
    assert len(keys) == 1
    # ...but with a nonzero coefficient the estimator matters
    assert (
        _spec(kl={"estimator": "k1", "coef": 0.04}).key()
        != _spec(kl={"estimator": "k3", "coef": 0.04}).key()
    )


def test_explicit_defaults_same_key():
    implicit = ObjectiveSpec.from_dict({"group_size": 8, "advantage": "group_zscore"})
    explicit = ObjectiveSpec.from_dict(
        {
            "name": "custom",
            "data": "on_policy",
            "group_size": 8,
            "advantage": {"name": "group_zscore", "eps": 1e-6, "unbiased_std": True},
            "surrogate": {"name": "reinforce"},
            "kl": {"estimator": "k3", "placement": "loss", "coef": 0.0},
            "aggregation": {"name": "token_mean"},
            "entropy_coef": 0.0,
            "preference": None,
            "epochs": 1,
        }
    )
    assert implicit.key() == explicit.key()
    ppo_implicit = ObjectiveSpec.from_dict({"surrogate": "ppo_clip"})
    ppo_explicit = ObjectiveSpec.from_dict(
        {"surrogate": {"name": "ppo_clip", "clip_low": 0.2, "clip_high": 0.2, "dual_clip": 0.0}}
    )
    assert ppo_implicit.key() == ppo_explicit.key()


def test_real_differences_change_key():
    base = _spec()
    assert _spec(surrogate={"name": "ppo_clip", "clip_low": 0.2, "clip_high": 0.28}).key() != (
        base.key()
    )
    assert _spec(group_size=4).key() != base.key()
    assert _spec(aggregation="token_mean").key() != base.key()
    assert _spec(kl={"estimator": "k3", "coef": 0.05}).key() != base.key()
    assert _spec(epochs=2).key() != base.key()
    assert _spec(entropy_coef=0.01).key() != base.key()


# Keys computed at commit 480763a for specs that use the components given new parameters since
# (each at its default): the key must not change.
KEYS_BEFORE = [
    ({"group_size": 4, "advantage": "batch_zscore"}, "3cbd40d4e76fb346"),
    (
        {
            "group_size": 4,
            "advantage": {"name": "reinforce_pp", "group_baseline": True},
            "kl": {"estimator": "k1", "placement": "reward", "coef": 0.05},
        },
        "fd0cd395864fdada",
    ),
    ({"group_size": 4, "advantage": "best_of_group"}, "6631c2021eee6a9b"),
    (
        {
            "group_size": 4,
            "advantage": "group_zscore",
            "kl": {"estimator": "k3", "placement": "loss", "coef": 0.04},
        },
        "66e288db67a6c792",
    ),
    (
        {
            "group_size": 4,
            "advantage": "group_mean",
            "aggregation": {"name": "seq_mean_token_sum_norm", "max_len": 0},
        },
        "a5c6ce52a3045987",
    ),
]


@pytest.mark.parametrize(("d", "key"), KEYS_BEFORE)
def test_keys_unchanged_by_added_parameters_at_default(d, key):
    assert ObjectiveSpec.from_dict(d).key() == key


@pytest.mark.parametrize(
    ("component", "param", "default", "other"),
    [
        ("batch_zscore", "std_of", "raw", "centred"),
        ("reinforce_pp", "baseline_of", "reward", "return"),
        ("best_of_group", "scale", "group", "sft"),
    ],
)
def test_added_parameter_enters_key_only_off_default(component, param, default, other):
    base = {"group_size": 4, "advantage": component}
    implicit = ObjectiveSpec.from_dict(base)
    at_default = ObjectiveSpec.from_dict({**base, "advantage": {"name": component, param: default}})
    off = ObjectiveSpec.from_dict({**base, "advantage": {"name": component, param: other}})
    assert not ADVANTAGES.get(component).params[param].keyed_at_default
    assert at_default.key() == implicit.key()
    assert off.key() != implicit.key()
    # to_dict still writes the parameter (exact round trip)
    assert implicit.to_dict()["advantage"][param] == default
    assert ObjectiveSpec.from_dict(off.to_dict()) == off


def test_added_parameter_choices_validated():
    _raises(
        {"group_size": 4, "advantage": {"name": "batch_zscore", "std_of": "tokens"}},
        "std_of",
        "centred",
        "raw",
    )


def test_registry_rejects_added_names_that_are_not_parameters():
    registry = Registry("thing", n_positional=1)
    with pytest.raises(ValueError, match="nope"):
        registry.register("x", symbolic=lambda a: a, added=("nope",))(lambda batch, a=1.0: batch)
    registry.register("y", symbolic=lambda a: a, added=("a",))(lambda batch, a=1.0: batch)
    assert not registry.get("y").params["a"].keyed_at_default


def test_k3_clamped_is_its_own_key():
    assert (
        _spec(kl={"estimator": "k3_clamped", "coef": 0.04}).key()
        != _spec(kl={"estimator": "k3", "coef": 0.04}).key()
    )


def test_key_is_stable_string():
    k = _spec().key()
    assert isinstance(k, str) and len(k) == 16
    int(k, 16)
    assert ObjectiveSpec.from_dict(GRPO).key() == k


def test_canonical_drops_dormant_params():
    s = ObjectiveSpec.from_dict(
        {"surrogate": {"name": "reinforce", "clip_high": 0.3, "clip_low": 0.1}}
    )
    c = s.canonical()
    assert c.surrogate.name == "reinforce"
    assert c.surrogate.params == ()
    assert "clip_high" not in c.to_dict()["surrogate"]
    # a ppo_clip carrying a sibling's parameter keeps only its own parameters
    s2 = ObjectiveSpec.from_dict({"surrogate": {"name": "ppo_clip", "max_kl": 0.05}})
    assert dict(s2.canonical().surrogate.params) == {
        "clip_low": 0.2,
        "clip_high": 0.2,
        "dual_clip": 0.0,
    }
    # zero KL resets the estimator and placement
    c3 = _spec(kl={"estimator": "k1", "placement": "reward", "coef": 0.0}).canonical()
    assert c3.kl.coef == 0.0
    assert c3.canonical() == c3


def test_canonical_is_idempotent_for_presets():
    for name in presets.names():
        c = presets.get(name).canonical()
        assert c.canonical() == c
        assert c.key() == presets.get(name).key()
