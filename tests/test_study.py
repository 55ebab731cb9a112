"""Studies: the grid's cells, the cache that makes a re-run resume, and bootstrap CIs (tiny models, a fake world)."""

import numpy as np
import pandas as pd
import pytest

from conftest import random_adapter, random_prompts

from commandv_interp.analysis.study import Study, bootstrap_rates, run_study


class TinyWorld:
    """Two tiny models; the 'behavior' rate is whether the first generated word is the donor+adapter's favourite."""

    def __init__(self, donor, recipient):
        self.models = {"donor": donor, "recipient": recipient}
        self.adapter = random_adapter(donor.d_model, layers=(0, 2), scale=0.6, seed=3)
        self.calls = 0

    def load_model(self, name):
        return self.models[name]

    def load_adapter(self, donor, behavior):
        return self.adapter

    def profile_prompts(self, profile_set, behavior, size):
        prompts = random_prompts(48, seed=1 if profile_set == "a" else 2)
        return prompts[:size] if size else prompts

    def outcomes(self, recipient, behavior, limit):
        self.calls += 1
        outs = recipient.generate(recipient.encode(random_prompts(limit, seed=9)), max_new_tokens=1)
        return [{"rate": float(o == "w5"), "side": float(o == "w6")} for o in outs]


@pytest.fixture()
def world(nn_llama, nn_gpt2):
    return TinyWorld(nn_llama, nn_gpt2)


def test_study_runs_every_cell_once_and_resumes(world, tmp_path):
    study = Study(pairs=(("donor", "recipient"),), behaviors=("b",), methods=("ridge", "interface"),
                  alphas=(0.5, "norm"), subsets=("all", "single"), profile_sets=("a",), limit=12, n_boot=200)
    table = run_study(study, world, tmp_path / "out", progress=False)
    cells = 2 * 2 * (1 + 2)  # methods × alphas × (all + one per adapter layer)
    assert world.calls == cells and len(table) == cells * 2  # two metrics per cell
    assert set(table.subset) == {"all", "single"} and set(table.layers) == {"0,2", "0", "2"}
    assert (table.ci_low <= table.value + 1e-12).all() and (table.value <= table.ci_high + 1e-12).all()
    norm = table[table.alpha == "norm"].alpha_used.unique()
    assert len(norm) == 2 and all(a > 0 for a in norm)  # one norm-matched α per converter method
    again = run_study(study, world, tmp_path / "out", progress=False)
    assert world.calls == cells  # nothing recomputed
    pd.testing.assert_frame_equal(again, table, check_dtype=False)
    bigger = Study(**{**study.__dict__, "alphas": (0.5, "norm", 1.0)})
    run_study(bigger, world, tmp_path / "out", progress=False)
    assert world.calls == cells + 2 * 3  # only the new α's cells


def test_bootstrap_rates_match_the_mean_and_bracket_it():
    records = [{"rate": float(i % 3 == 0)} for i in range(60)] + [{"side": 1.0}]
    out = bootstrap_rates(records, n_boot=500, seed=0)
    value, low, high, n = out["rate"]
    assert value == pytest.approx(np.mean([i % 3 == 0 for i in range(60)])) and n == 60
    assert low < value < high and high - low < 0.4
    assert out["side"] == (1.0, 1.0, 1.0, 1)


@pytest.mark.parametrize("text, fragment", [
    ('pairs = [["a"]]\nbehaviors = ["b"]', "pairs must be"),
    ('pairs = [["a", "b"]]\nbehaviors = ["b"]\nmethods = ["magic"]', "methods"),
    ('pairs = [["a", "b"]]\nbehaviors = ["b"]\nalphas = ["loud"]', "alpha"),
    ('pairs = [["a", "b"]]\nbehaviors = []', "empty"),
    ('pairs = [["a", "b"]]\nbehaviors = ["b"]\ncolour = 3', "unknown keys"),
    ('pairs = [["a", "b"]', "cannot read"),
])
def test_bad_study_files_are_refused(tmp_path, text, fragment):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=fragment):
        Study.from_toml(path)
