import pytest
import torch

from conftest import random_prompts

import commandv_interp as cv
from commandv_interp.correspondence import monotone_alignment, relative_depth
from commandv_interp.correspondence.similarity import debiased_cka, linear_cka, mutual_knn, regression_r2


def _profile(acts, fp="fp", n_layers=None):
    d = next(iter(acts.values())).shape[1]
    return cv.ActivationProfile(acts, "m", "h", n_layers or len(acts), d, "float32", fp)


def test_relative_depth_rule():
    assert [relative_depth(l, 4, 4) for l in range(4)] == [0, 1, 2, 3]  # not reversed
    assert [relative_depth(l, 28, 16) for l in (0, 2, 26)] == [0, 1, 15]
    assert relative_depth(5, 6, 3) == 2


@pytest.mark.parametrize("fn", [linear_cka, debiased_cka, regression_r2, mutual_knn])
def test_metrics_invariant_to_rotation(fn):
    x = torch.randn(64, 8, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    # r2 uses a small ridge, which shrinks the fit by ~1e-6 relative
    assert fn(x, 2.5 * x @ q) == pytest.approx(1.0, abs=1e-4)
    assert fn(x, torch.randn(64, 8, dtype=torch.float64)) < 0.6


def test_monotone_alignment_preserves_order():
    sim = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.0], [0.0, 0.0, 1.0]])
    cols = monotone_alignment(sim)
    assert cols == sorted(cols) and cols[2] == 2
    assert sim.argmax(1).tolist() == [1, 0, 2]


def test_self_copy_similarity_gives_identity(nn_llama, hf_llama):
    import copy

    twin = cv.open_model(copy.deepcopy(hf_llama[0]), tokenizer=hf_llama[1], name="twin")
    prompts = random_prompts(40, seed=11)
    a = cv.profile(nn_llama, prompts, progress=False)
    b = cv.profile(twin, prompts, progress=False)
    for metric in ("cka", "debiased_cka", "r2", "mutual_knn"):
        for assignment in ("argmax", "monotone"):
            m = cv.match_layers(a, b, method="similarity", metric=metric, assignment=assignment)
            assert m.as_dict() == {l: l for l in range(4)}, (metric, assignment)
    assert m.similarity.shape == (4, 4)


def test_depth_map_and_round_trip(tmp_path):
    acts_d = {l: torch.randn(20, 6) for l in range(6)}
    acts_r = {l: torch.randn(20, 4) for l in range(3)}
    m = cv.match_layers(_profile(acts_d), _profile(acts_r), method="depth", donor_layers=[0, 2, 4])
    assert m.as_dict() == {0: 0, 2: 1, 4: 2}
    again = cv.LayerMap.load(m.save(tmp_path / "map.json"))
    assert m.similarity is None  # the depth rule computes no similarity matrix, only the chosen pairs' scores
    expected = [cv.correspondence.linear_cka(acts_d[d], acts_r[r]) for d, r in m.pairs]
    assert torch.allclose(torch.tensor(m.scores, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64))
    assert again.pairs == m.pairs and again.scores == m.scores
    free = cv.relative_depth_map([0, 2, 4], 6, 3)  # no profiles: the same pairs
    assert free.pairs == m.pairs and free.method == "depth" and all(s != s for s in free.scores)
    assert cv.LayerMap.load(free.save(tmp_path / "free.json")).pairs == m.pairs


def test_mismatched_fingerprints_refused():
    a = _profile({0: torch.randn(10, 4)}, fp="aaaa")
    b = _profile({0: torch.randn(10, 4)}, fp="bbbb")
    with pytest.raises(ValueError, match="aaaa.*bbbb"):
        cv.match_layers(a, b, method="similarity")
