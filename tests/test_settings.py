"""One settings value (uotsel.UOT) with the paper's defaults, one home for each default, and
costs as objects."""

from __future__ import annotations

import ast
import inspect
import math
import pathlib

import numpy as np
import pytest

import uotsel
from uotsel import cli, costs, paper, strategies
from uotsel.settings import UOT, resolve

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAPER_VALUES = {
    "eps_c": paper.EPS_C,
    "eps": paper.EPS,
    "tau_source": paper.TAU_SOURCE,
    "tau_target": paper.TAU_TARGET,
    "threshold": paper.SOLVER_RTOL,
    "max_iter": paper.SOLVER_MAX_ITER,
}


def _features(seed=0, n=60, m=7, d=12):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(m, d)).astype(np.float32)


def test_the_value_is_the_papers():
    uot = UOT()
    assert uot.cost == paper.COST
    for field, value in PAPER_VALUES.items():
        assert getattr(uot, field) == value, field
    assert uot.method == "auto"


def test_public_signatures_defer_to_the_value():
    # Every solver keyword of the public functions defaults to None, i.e. to the UOT field.
    for fn in (uotsel.sinkhorn, uotsel.transport):
        params = inspect.signature(fn).parameters
        assert params["settings"].default is None
        for field in UOT._fields:
            if field in params and not (fn is uotsel.sinkhorn and field == "cost"):
                assert params[field].default is None, (fn.__name__, field)
    params = inspect.signature(uotsel.cost_matrix).parameters
    assert params["kind"].default == UOT().cost
    assert params["eps_c"].default == UOT().eps_c
    assert inspect.signature(uotsel.cosine_cost).parameters["eps_c"].default == UOT().eps_c


def test_strategy_defaults_are_the_values_fields():
    uot = strategies.STRATEGIES["uot"].defaults
    for field, value in UOT()._asdict().items():
        assert uot[field] == value, field
    for name in ("nearest", "greedy_ot"):
        assert strategies.STRATEGIES[name].defaults["eps_c"] == UOT().eps_c
    assert strategies.STRATEGIES["nearest"].defaults["cost"] == UOT().cost


def test_cli_flag_defaults_are_the_values_fields():
    parser, _ = cli._build_parser()
    args = parser.parse_args(["select", "--source", "s.npz", "--out", "o.json"])
    assert set(cli._SOLVER_FLAG_TYPES) == set(UOT._fields) - {"cost"}
    for field in cli._SOLVER_FLAG_TYPES:
        assert getattr(args, field) == getattr(UOT(), field), field


def _literal_copies(path: pathlib.Path) -> list[str]:
    """Keyword arguments, parameter defaults and assignments that spell a paper value of a
    solver field as a number (``tau_target=100.0``, ``EPS_C = 0.01``)."""
    names = {f: {f, f.upper()} for f in PAPER_VALUES}
    names["tau_source"] |= {"TAU_S"}
    names["tau_target"] |= {"TAU_T"}
    names["threshold"] |= {"SOLVER_RTOL"}
    names["max_iter"] |= {"SOLVER_MAX_ITER"}
    owner = {n: f for f, group in names.items() for n in group}
    found = []

    def check(name, node):
        field = owner.get(name)
        if field is None or not isinstance(node, ast.Constant):
            return
        value = node.value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isclose(value, PAPER_VALUES[field]):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}={value}")

    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg:
            check(node.arg, node.value)
        elif isinstance(node, ast.arguments):
            positional = node.posonlyargs + node.args
            with_defaults = positional[len(positional) - len(node.defaults) :]
            for arg, default in zip(with_defaults, node.defaults, strict=True):
                check(arg.arg, default)
            for arg, default in zip(node.kwonlyargs, node.kw_defaults, strict=True):
                if default is not None:
                    check(arg.arg, default)
        elif isinstance(node, ast.Assign):
            targets = node.targets[0]
            if isinstance(targets, ast.Name):
                check(targets.id, node.value)
            elif isinstance(targets, ast.Tuple) and isinstance(node.value, ast.Tuple):
                for t, v in zip(targets.elts, node.value.elts, strict=False):
                    if isinstance(t, ast.Name):
                        check(t.id, v)
    return found


def test_no_literal_copy_of_a_paper_default():
    files = [
        p
        for folder in ("uotsel", "benchmarks")
        for p in sorted((ROOT / folder).rglob("*.py"))
        if p.name != "paper.py"
    ]
    found = [hit for p in files for hit in _literal_copies(p)]
    assert found == []


def test_the_literal_scan_finds_a_copy(tmp_path):
    # The scan above is only worth something if it sees each form of copy.
    sample = ROOT / "tests" / "_scan_sample.py"
    sample.write_text(
        "def f(tau_target=100.0):\n    pass\n\nEPS_C, EPS = 0.01, 1.0\ng(eps_c=0.01)\n"
    )
    try:
        assert len(_literal_copies(sample)) == 4
    finally:
        sample.unlink()


def test_keywords_override_the_value_and_none_keeps_it():
    base = UOT(tau_target=50.0)
    assert resolve(base, tau_target=None) == base
    assert resolve(base, eps=0.5) == base._replace(eps=0.5)
    assert resolve(None) == UOT()
    with pytest.raises(TypeError, match=r"^settings: expected a uotsel.UOT"):
        resolve({"eps": 1.0})
    with pytest.raises(TypeError, match=r"^tau: not a setting of uotsel.UOT"):
        resolve(None, tau=1.0)


@pytest.mark.slow
def test_the_value_and_the_keywords_solve_the_same_problem():
    source, target = _features()
    by_value = uotsel.transport(source, target, UOT(tau_target=20.0, eps=0.5))
    by_keywords = uotsel.transport(source, target, tau_target=20.0, eps=0.5)
    paper_run = uotsel.transport(source, target)
    np.testing.assert_array_equal(by_value.f, by_keywords.f)
    assert not np.array_equal(by_value.f, paper_run.f)
    c = uotsel.cosine_cost(source, target)
    np.testing.assert_array_equal(uotsel.sinkhorn(c, UOT(eps=0.5)).f, uotsel.sinkhorn(c, eps=0.5).f)


def test_select_takes_the_value():
    source, target = _features(1)
    sel = uotsel.select(source, target, UOT(tau_target=20.0), top_k=5)
    assert sel.settings["tau_target"] == 20.0
    same = uotsel.select(source, target, top_k=5, tau_target=20.0)
    np.testing.assert_array_equal(sel.ranking, same.ranking)
    # a keyword overrides the value's field
    assert uotsel.select(source, target, UOT(eps=0.5), eps=0.25, top_k=5).settings["eps"] == 0.25


def test_cost_registry_dispatches_by_object():
    assert set(costs.COSTS) == {"cosine", "l2", "sqeuclidean"}
    for name, cost in costs.COSTS.items():
        assert costs.resolve(name) is cost
        assert costs.resolve(cost) is cost
    assert costs.COSTS["cosine"].spherical and not costs.COSTS["l2"].spherical
    with pytest.raises(ValueError, match=r"^cost: unknown cost 'manhattan'; valid: cosine"):
        costs.resolve("manhattan")
    with pytest.raises(ValueError, match=r"^kind: unknown cost 3"):
        uotsel.cost_matrix(np.ones((2, 2)), np.ones((2, 2)), 3)


@pytest.mark.slow
def test_a_cost_object_computes_what_its_name_does():
    source, target = _features(2)
    for name, cost in costs.COSTS.items():
        np.testing.assert_array_equal(
            uotsel.cost_matrix(source, target, cost), uotsel.cost_matrix(source, target, name)
        )


def test_a_new_registered_cost_family_member():
    # A cost defined by family alone: the cube of the distance, against numpy in float64.
    source, target = _features(3, n=9, m=4, d=5)
    cube = costs.Cost("cubic", angular=False, power=3)
    got = np.asarray(uotsel.cost_matrix(source, target, cube), np.float64)
    want = (
        np.linalg.norm(
            source[:, None].astype(np.float64) - target[None].astype(np.float64), axis=-1
        )
        ** 3
    )
    np.testing.assert_allclose(got, want, rtol=2e-5)


@pytest.mark.slow
def test_a_function_cost_equals_the_same_matrix():
    source, target = _features(4)
    manhattan = lambda s, t: jnp_abs_sum(s, t)  # noqa: E731
    want = np.abs(source[:, None] - target[None]).sum(-1)
    np.testing.assert_allclose(uotsel.cost_matrix(source, target, manhattan), want, rtol=1e-6)
    uot = UOT(cost=manhattan, eps=5.0)
    out = uotsel.transport(source, target, uot)
    ref = uotsel.sinkhorn(want, eps=5.0)
    np.testing.assert_allclose(out.log_row_sums, ref.log_row_sums, rtol=1e-5, atol=1e-5)
    sel = uotsel.select(source, target, uot, top_k=3)
    assert sel.settings["cost"] == "<lambda>"
    nearest = uotsel.select(source, target, strategy="nearest", cost=manhattan, top_k=3)
    np.testing.assert_array_equal(nearest.ranking, np.lexsort((np.arange(60), want.min(1))))


def jnp_abs_sum(s, t):
    import jax.numpy as jnp

    return jnp.abs(s[:, None] - t[None]).sum(-1)


def test_a_function_cost_with_a_bad_result_is_named():
    source, target = _features(5)
    with pytest.raises(ValueError, match=r"^cost: .* shape \[7, 60\]; expected float \[60, 7\]"):
        uotsel.transport(source, target, cost=lambda s, t: (s @ t.T).T)
    with pytest.raises(ValueError, match=r"^cost: .* not finite"):
        uotsel.cost_matrix(source, target, lambda s, t: (s @ t.T) / 0.0)


@pytest.mark.slow
def test_kmeans_takes_its_geometry_from_the_cost():
    x = np.random.default_rng(6).normal(size=(120, 6))
    default = uotsel.kmeans(x, 3, seed=0)
    assert default.spherical  # the paper's cost is the cosine
    for cost, spherical in (("cosine", True), ("l2", False), (costs.COSTS["sqeuclidean"], False)):
        got = uotsel.kmeans(x, 3, cost=cost, seed=0)
        same = uotsel.kmeans(x, 3, spherical=spherical, seed=0)
        assert got.spherical is spherical
        np.testing.assert_array_equal(got.centroids, same.centroids)
    with pytest.raises(ValueError, match=r"^spherical: True disagrees with cost 'l2'"):
        uotsel.kmeans(x, 3, cost="l2", spherical=True)
    with pytest.raises(ValueError, match=r"^cost: unknown cost 'hamming'"):
        uotsel.kmeans(x, 3, cost="hamming")


def test_the_exports_are_complete_and_resolve():
    assert sorted(uotsel.__all__) == sorted(uotsel._EXPORTS)
    for name in uotsel.__all__:
        assert getattr(uotsel, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        uotsel.nope  # noqa: B018


def test_submodules_load_as_attributes():
    assert uotsel.unbalanced.sinkhorn is uotsel.sinkhorn
    assert uotsel.lloyd.assign is not None


def test_plain_settings_are_validated_once_per_shape_and_dtype():
    from uotsel import unbalanced

    first = unbalanced.prepare((), 7, 3, np.float32, UOT(eps=0.5))
    assert unbalanced.prepare((), 7, 3, np.float32, UOT(eps=0.5)) is first
    assert unbalanced.prepare((), 7, 3, np.float64, UOT(eps=0.5)) is not first
    assert unbalanced.prepare((), 7, 4, np.float32, UOT(eps=0.5)) is not first
    weighted = unbalanced.prepare((), 7, 3, np.float32, UOT(eps=0.5), source_weights=np.ones(7))
    assert weighted is not first and weighted.source_weights is not None
    # An array field is validated every time; equal values of other types are told apart.
    arrayed = unbalanced.prepare((), 7, 3, np.float32, UOT(eps=np.array(0.5)))
    assert arrayed is not unbalanced.prepare((), 7, 3, np.float32, UOT(eps=np.array(0.5)))
    as_float = unbalanced.prepare((), 7, 3, np.float32, UOT(eps=1.0))
    assert unbalanced.prepare((), 7, 3, np.float32, UOT(eps=1)) is not as_float
    with pytest.raises(ValueError, match="eps"):
        unbalanced.prepare((), 7, 3, np.float32, UOT(eps=-1.0))


def test_placed_settings_follow_their_values():
    from uotsel import costs, unbalanced

    plain = unbalanced.prepare((), 5, 2, np.float32, UOT(eps=0.25))
    placed = unbalanced.on_device(plain)
    assert unbalanced.on_device(plain) is placed and float(placed.eps) == 0.25
    other = unbalanced.on_device(unbalanced.prepare((), 5, 2, np.float32, UOT(eps=0.5)))
    assert float(other.eps) == 0.5 and float(unbalanced.on_device(plain).eps) == 0.25
    # A refused eps_c is refused every time, though a valid one is checked once.
    for _ in range(2):
        with pytest.raises(ValueError, match="eps_c"):
            costs.check_eps_c(0.0)
        costs.check_eps_c(0.01)
