"""Where a transfer's FLOPs went (pipeline/compute.py): exact parts on a planted table, a table from another
transfer refused, and on a real tiny transfer each part against an independent count (the setup as ``prepare``
counts it, the training as the polished adapters record it, the finetune as ``finetune_flops_estimate`` gives it)."""

from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import random_adapter, random_prompts

import commandv_interp as cv
from commandv_interp.pipeline.compute import KEYS, PARTS, compute_table
from commandv_interp.pipeline.polish import finetune_flops_estimate
from commandv_interp.pipeline.search import prepare


def _planted(total: float, surrogate: float = 0.0, budget_flops: float | None = 50.0):
    rows = [(0, 0.0, 4.0), (1, 0.0, 2.0), (1, 0.0, 2.0), (2, 0.0, 4.0),  # reference, two stage-1 pastes, finalist
            (3, 10.0, 4.0), (3, 6.0, 4.0),  # two polish rounds: their training and scoring
            (4, 0.0, 4.0), (4, 0.0, 4.0)]  # the scale search
    table = pd.DataFrame(rows, columns=["stage", "fit_flops", "score_flops"])
    table["polish_budget_flops"] = [None] * 4 + [budget_flops] * 2 + [None] * 2
    return SimpleNamespace(candidates=table, flops=total, config=SimpleNamespace(polish_budget=0.05),
                           donor_adapter=SimpleNamespace(metadata={"surrogate_flops": surrogate}))


def test_parts_of_a_planted_transfer():
    table = compute_table(_planted(total=100.0, surrogate=7.0))
    assert list(table.part) == list(PARTS) and list(table.key) == list(KEYS)
    flops = dict(zip(table.part, table.flops))
    assert flops == {PARTS[0]: 100.0 - 7 - 12 - 16 - 8 - 8, PARTS[1]: 7.0, PARTS[2]: 12.0, PARTS[3]: 16.0,
                     PARTS[4]: 8.0, PARTS[5]: 8.0}
    assert table.flops.sum() == pytest.approx(100.0)
    assert table.share_of_call.tolist() == pytest.approx([f / 100.0 for f in table.flops])
    assert table.share_of_finetune.tolist() == pytest.approx([f / (50.0 / 0.05) for f in table.flops])


def test_no_polish_has_no_finetune_share_and_a_foreign_table_is_refused():
    table = _planted(total=100.0, budget_flops=None)
    assert compute_table(table).share_of_finetune.isna().all()
    with pytest.raises(ValueError, match="not this transfer's"):
        compute_table(_planted(total=40.0))  # the rows alone add up to 52
    broken = _planted(total=100.0)
    broken.candidates = broken.candidates.drop(columns="score_flops")
    with pytest.raises(ValueError, match=r"lacks \['score_flops'\]"):
        compute_table(broken)


def test_parts_of_a_real_transfer_match_independent_counts(nn_llama, nn_gpt2, tmp_path):
    adapter = random_adapter(nn_llama.d_model, layers=(0, 2), scale=0.6, seed=3)
    prompts = random_prompts(40, seed=11)
    result = cv.transfer(nn_llama, nn_gpt2, adapter, prompts, max_new_tokens=8, polish_steps=8, seed=1,
                         progress=False)
    table = compute_table(result).set_index("part")
    pd.testing.assert_frame_equal(result.compute.set_index("part"), table)
    assert table.flops.sum() == pytest.approx(result.flops, rel=1e-9)
    setup = prepare(nn_llama, nn_gpt2, adapter, prompts, max_new_tokens=8, seed=1)
    assert table.loc[PARTS[0], "flops"] == pytest.approx(setup.flops, rel=1e-9)  # as prepare counts it
    assert table.loc[PARTS[1], "flops"] == 0.0  # a ReFT donor: no surrogate
    last: dict[tuple[str, float], float] = {}  # each trainer's last round records its cumulative training FLOPs
    for name, candidate in result.considered.items():
        if candidate.stage == 3:
            meta = candidate.edit.metadata["polish"]
            key = (name.split("+polish/")[0], meta["lr"])
            last[key] = max(last.get(key, 0.0), meta["flops"])
    assert len(last) >= 2  # the race: at least the paste and the fresh start trained
    assert table.loc[PARTS[3], "flops"] == pytest.approx(sum(last.values()), rel=1e-9)
    finetune = finetune_flops_estimate(nn_gpt2, setup.fitting, list(setup.fitting_answers))
    assert table.share_of_finetune.tolist() == pytest.approx((table.flops / finetune).tolist(), rel=1e-9)
    back = cv.load_transfer(result.save(tmp_path / "t"), nn_gpt2)  # a saved transfer says the same
    pd.testing.assert_frame_equal(back.compute, result.compute)
