"""The ablation script (``benchmarks/transfer_variant.py``): its ``--config`` becomes the TransferConfig it says,
at each seed, and a bad one exits 2 with one ``error:`` line."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from commandv_interp.pipeline import TransferConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def variant():
    sys.path.insert(0, str(BENCHMARKS))  # it imports label_free, as when run as a script
    try:
        spec = importlib.util.spec_from_file_location("transfer_variant_benchmark", BENCHMARKS / "transfer_variant.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_config_is_the_defaults_with_the_settings_changed(variant):
    config = variant.config_of('{"polish_lrs": [0.016], "lr_fallback": false}', 3)
    assert config == TransferConfig(seed=3, polish_lrs=(0.016,), lr_fallback=False)
    assert variant.config_of("{}", 1) == TransferConfig(seed=1)


@pytest.mark.parametrize("text, match", [('{"polish_lrz": 1}', "unknown keys \\['polish_lrz'\\]"),
                                         ('{"seed": 2}', "other than seed"), ("[1]", "a JSON object"),
                                         ('{"polish_lrs"', "is not JSON"), ('{"polish_budget": 2.0}', "polish_budget")])
def test_a_bad_config_exits_2_with_one_line(variant, capsys, text, match):
    with pytest.raises(SystemExit) as exit_:
        variant.config_of(text, 0)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --config") and re.search(match, err)
