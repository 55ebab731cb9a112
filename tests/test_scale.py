"""The scale search after the polish (pipeline/scale.py): an exact scaling of NodiReFT deltas, the plateau rule on
planted criteria, its place in cv.transfer (a stage-4 candidate, labelled, saved and loaded), and the config flag."""

import math

import pytest
import torch

from conftest import random_adapter, random_prompts, rotated_pair

import commandv_interp as cv
from commandv_interp.adapters import Adapter
from commandv_interp.pipeline.candidates import Candidate
from commandv_interp.pipeline.config import TransferConfig
from commandv_interp.pipeline.labels import edit_label, transfer_label
from commandv_interp.pipeline.scale import SCALES, choose_scale, plateau_scale, scale_of, scaled, tolerance


def test_scaled_multiplies_every_delta_exactly_and_leaves_the_original():
    adapter = random_adapter(16, layers=(0, 2), seed=3)
    h = torch.randn(5, 16)
    before = {k: iv.delta(h).clone() for k, iv in adapter.interventions.items()}
    twice = scaled(adapter, 2.5)
    for layer, iv in twice.interventions.items():
        torch.testing.assert_close(iv.delta(h), 2.5 * before[layer], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(adapter.interventions[layer].delta(h), before[layer])
    assert twice.metadata["scale"] == 2.5 and twice.positions == adapter.positions


def test_scaled_refuses_a_bad_factor_and_kinds_that_do_not_scale():
    with pytest.raises(ValueError, match="positive"):
        scaled(random_adapter(16, seed=1), 0.0)
    with pytest.raises(ValueError, match="only NodiReFT"):
        scaled(random_adapter(16, seed=1, kind="loreft"), 1.5)


def test_tolerance_is_one_prompt_of_the_smaller_stratum():
    assert tolerance(18, 29) == pytest.approx(1 / 36)
    assert tolerance(0, 10) == pytest.approx(1 / 10)
    with pytest.raises(ValueError, match="no scoring prompts"):
        tolerance(0, 0)


@pytest.mark.parametrize("criterion, tol, expected", [
    ({0.64: 0.5, 0.8: 0.9, 1.0: 1.0, 1.25: 0.99, 1.5625: 0.8}, 0.03, (1.0, 1.25)),
    ({0.64: 1.0, 0.8: 1.0, 1.0: 1.0, 1.25: 1.0, 1.5625: 1.0}, 0.01, (0.64, 1.5625)),
    ({0.64: 0.2, 0.8: 0.3, 1.0: 0.5, 1.25: 0.9, 1.5625: 1.0}, 0.05, (1.5625, 1.5625)),
    # two separate maxima: the run around the one nearest 1 (a gap below the tolerance splits them)
    ({0.64: 1.0, 0.8: 0.5, 1.0: 0.6, 1.25: 1.0, 1.5625: 0.97}, 0.05, (1.25, 1.5625)),
])
def test_plateau_is_the_contiguous_run_around_the_best(criterion, tol, expected):
    assert plateau_scale(criterion, tol) == expected


def test_scale_of_reads_the_name():
    assert scale_of("ridge/depth+polish/8/lr=0.004*scale=0.8") == 0.8
    assert scale_of("scratch+polish/4/lr=0.016") == 1.0


class _PlantedSearch:
    """A search whose criterion is a planted function of the scale (stage-4 names carry it), 16 + 16 prompts."""

    def __init__(self, curve):
        self.curve, self.scored = curve, []

    def row(self, candidate):
        return {"criterion": self.curve(1.0), "n_changed": 16, "n_scoring": 32}

    def score(self, candidate):
        assert candidate.stage == 4 and not candidate.is_paste
        self.scored.append(scale_of(candidate.name))
        return {"criterion": self.curve(scale_of(candidate.name))}


def _polished():
    return Candidate("scratch+polish/8/lr=0.004", 3, "scratch", "depth", random_adapter(16, seed=5), None,
                     polish_steps=8, polish_lr=0.004)


def test_choose_scale_takes_the_middle_of_the_plateau_and_scores_it():
    # best at 1.5625, within one prompt (1/32) down to 1.0: the middle is sqrt(1.5625) = 1.25 (on the grid)
    search = _PlantedSearch(lambda s: {0.64: 0.6, 0.8: 0.9, 1.0: 0.97, 1.25: 0.98, 1.5625: 1.0}.get(s, 0.0))
    got = choose_scale(search, _polished())
    assert scale_of(got.name) == 1.25 and got.stage == 4 and got.polish_steps == 8
    assert sorted(search.scored) == sorted(SCALES)  # the grid only: the middle was on it
    h = torch.randn(3, 16)
    for layer, iv in got.edit.interventions.items():
        torch.testing.assert_close(iv.delta(h), 1.25 * _polished().edit.interventions[layer].delta(h))


def test_choose_scale_scores_a_middle_off_the_grid_and_falls_back_when_it_falls_off():
    middle = round(math.sqrt(0.8 * 1.25), 4)  # plateau 0.8 .. 1.25: the middle 1.0 is scored already
    flat = _PlantedSearch(lambda s: 1.0 if 0.8 <= s <= 1.25 else 0.5)
    assert scale_of(choose_scale(flat, _polished()).name) == middle == 1.0
    wide = _PlantedSearch(lambda s: 1.0 if 0.64 <= s <= 1.25 else 0.0)  # plateau 0.64 .. 1.25: middle off the grid
    assert scale_of(choose_scale(wide, _polished()).name) == round(math.sqrt(0.64 * 1.25), 4)
    assert wide.scored[-1] == round(math.sqrt(0.64 * 1.25), 4)
    # a middle that scores below the plateau: the scored scale nearest to it in the plateau
    dip = _PlantedSearch(lambda s: 0.0 if s == round(math.sqrt(0.64 * 1.25), 4) else (1.0 if s <= 1.25 else 0.0))
    got = choose_scale(dip, _polished())
    assert scale_of(got.name) in (0.8, 1.0) and round(math.sqrt(0.64 * 1.25), 4) in dip.scored


def test_choose_scale_leaves_other_stages_and_an_unpolished_start():
    search = _PlantedSearch(lambda s: 1.0)
    finalist = Candidate("interface/depth", 2, "interface", "depth", random_adapter(16, seed=5))
    assert choose_scale(search, finalist) is finalist
    start = Candidate("scratch", 3, "scratch", "depth", random_adapter(16, seed=5))
    assert choose_scale(search, start) is start and not search.scored


def test_labels_say_the_scale():
    assert edit_label(False, 8, 0.8) == "distillation only (no paste), scaled ×0.8 on held-out prompts"
    with pytest.raises(ValueError, match="scale must be a positive"):
        edit_label(True, 4, 0.0)

    class Outcome:
        choice, converters, polished = "scratch+polish/8/lr=0.004*scale=1.25", None, object()

    assert transfer_label(Outcome()) == "distillation only (no paste), scaled ×1.25 on held-out prompts"


def test_config_flag_is_checked_and_an_older_config_loads_without_it():
    with pytest.raises((ValueError, TypeError), match="scale_search"):  # TypeError: the jaxtyping/beartype check
        TransferConfig(scale_search="yes")  # type: ignore[arg-type]
    old = TransferConfig().to_dict()
    del old["scale_search"], old["lr_fallback"]
    assert TransferConfig.from_dict(old).scale_search is False and TransferConfig.from_dict(old).lr_fallback is False
    with pytest.raises((ValueError, TypeError), match="lr_fallback"):
        TransferConfig(lr_fallback=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown keys"):
        TransferConfig.from_dict(TransferConfig().to_dict() | {"nonsense": 1})


@pytest.fixture(scope="module")
def pair(hf_llama, nn_llama):
    return rotated_pair(hf_llama, nn_llama, rotation_seed=7)


def test_transfer_with_scale_search_chooses_a_scored_stage_4_edit_and_saves_it(pair, tmp_path):
    donor, recipient, adapter = pair
    t = cv.transfer(donor, recipient, adapter, random_prompts(32, seed=11), max_new_tokens=8, polish_steps=4,
                    start="scratch", scale_search=True, progress=False)
    c = t.candidates
    assert t.config.scale_search and (c.stage == 4).sum() >= len(SCALES)
    assert t.choice in set(c.candidate) and isinstance(t.polished, Adapter)
    if t.choice.startswith("scratch+polish") and "*scale=" in t.choice:
        assert transfer_label(t).endswith(f"scaled ×{scale_of(t.choice):g} on held-out prompts")
    weights = {k: v.clone() for k, v in recipient.torch_module.state_dict().items()}
    back = cv.load_transfer(t.save(tmp_path / "t"), recipient)
    assert back.choice == t.choice and back.config.scale_search and transfer_label(back) == transfer_label(t)
    prompts = random_prompts(4, seed=99)
    with t.paste():
        a = recipient.forward(recipient.encode(prompts))
    with back.paste():
        b = recipient.forward(recipient.encode(prompts))
    torch.testing.assert_close(a, b)
    assert all(torch.equal(v, recipient.torch_module.state_dict()[k]) for k, v in weights.items())
