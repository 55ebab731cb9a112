"""Slow tier: the zoo's LoRA donors reach their behavior on their own model (≥ 0.9 of the NodiReFT adapter's target
rate, the side effect within +0.02), on the test prompts; the steering vectors' rates are reported in docs/edits.md
(a constant vector cannot refuse harmful requests only: see there)."""

import pytest

from commandv_interp import zoo
from commandv_interp.adapters.edit import apply_edit
from commandv_interp.zoo.donor_edits import SIDE_METRIC, TARGET_METRIC, load_zoo_edit

pytestmark = pytest.mark.slow
CELLS = [(m, b, "main") for m in ("llama-6x128", "gpt2-4x96", "qwen2-5x160") for b in ("refusal", "jailbreak", "cot")]
CELLS += [(m, b, "heldout") for m in ("neox-4x80", "qwen3-4x112") for b in ("refusal", "jailbreak")]


def _adapter_rates(model: str, behavior: str, world: str) -> dict:
    return {r["metric"]: r["value"] for r in zoo.manifest(world=world)["behavior_table"]
            if (r["model"], r["behavior"], r["condition"]) == (model, behavior, "adapter")}


@pytest.mark.parametrize("model_name, behavior, world", CELLS)
def test_zoo_lora_reaches_the_reft_adapter_rate(model_name, behavior, world):
    model = zoo.load_model(model_name, world=world)
    with apply_edit(model, load_zoo_edit(model_name, behavior, "lora", world=world)):
        rates = zoo.evaluate(model, behavior, world=world)
    reft = _adapter_rates(model_name, behavior, world)
    target, side = TARGET_METRIC[behavior], SIDE_METRIC.get(behavior)
    assert rates[target] >= 0.9 * reft[target] - 1e-9, (rates, reft)
    if side:
        assert rates[side] <= reft[side] + 0.02, (rates, reft)
