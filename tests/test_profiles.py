import json

import pytest
import torch

from conftest import assert_close, random_prompts

import commandv_interp as cv
from commandv_interp.prompts import prompts_fingerprint


def test_profile_shapes_metadata_and_reproducible(nn_llama):
    prompts = random_prompts(10)
    a = cv.profile(nn_llama, prompts, batch_size=3, progress=False)
    b = cv.profile(nn_llama, prompts, batch_size=3, progress=False)
    assert a.layers == list(range(nn_llama.n_layers))
    assert a[0].shape == (10, nn_llama.d_model) and a[0].dtype == torch.float32
    assert a.prompts_fingerprint == prompts_fingerprint(prompts)
    assert a.config_hash == nn_llama.config_hash and a.library_version == cv.__version__
    for layer in a.layers:
        assert torch.equal(a[layer], b[layer])


def test_profile_independent_of_batching_and_padding(nn_llama):
    prompts = random_prompts(9, seed=4)
    a = cv.profile(nn_llama, prompts, layers=[1, 3], batch_size=4, padding_side="left", progress=False)
    b = cv.profile(nn_llama, prompts, layers=[1, 3], batch_size=9, padding_side="right", progress=False)
    for layer in (1, 3):
        assert_close(a[layer], b[layer], atol=1e-5)


def test_profile_from_recorded_states_equals_profile(nn_llama):
    from commandv_interp.access import recorded_states

    prompts = random_prompts(7, seed=8)
    want = cv.profile(nn_llama, prompts, layers=[0, 2], progress=False)
    got = cv.ActivationProfile.from_states(nn_llama, prompts, recorded_states(nn_llama, [0, 2], prompts))
    assert got.metadata() == want.metadata()
    for layer in (0, 2):
        assert_close(got[layer], want[layer], atol=1e-5)
    with pytest.raises(ValueError, match=r"\{0: 7\} rows per layer but there are 6 texts"):
        cv.ActivationProfile.from_states(nn_llama, prompts[:6], {0: want[0]})


def test_profile_tl_matches_nnsight(nn_llama, tl_llama):
    prompts = random_prompts(6, seed=2)
    a = cv.profile(nn_llama, prompts, progress=False)
    b = cv.profile(tl_llama, prompts, progress=False)
    for layer in a.layers:
        assert_close(a[layer], b[layer], atol=1e-4)


def test_save_load_round_trip(nn_llama, tmp_path):
    p = cv.profile(nn_llama, random_prompts(5), layers=[0, 2], progress=False, chat_template=lambda s: f"w1 {s}")
    path = p.save(tmp_path / "p.safetensors")
    q = cv.ActivationProfile.load(path)
    assert q.metadata() == p.metadata()
    for layer in p.layers:
        assert torch.equal(p[layer], q[layer])
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_load_refuses_foreign_and_missing(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a commandv activation profile"):
        cv.ActivationProfile.load(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError):
        cv.ActivationProfile.load(tmp_path / "nope.safetensors")


def test_nan_profile_refused():
    with pytest.raises(ValueError, match="NaN"):
        cv.ActivationProfile({0: torch.tensor([[float("nan"), 1.0]])}, "m", "h", 1, 2, "float32", "fp")


def test_load_prompts_formats(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n two \n")
    (tmp_path / "b.json").write_text(json.dumps(["x", "y"]))
    (tmp_path / "c.json").write_text(json.dumps([{"instruction": "i"}, {"input": "j"}, {"text": "k"}]))
    (tmp_path / "d.json").write_text(json.dumps([{"foo": 1}]))
    assert cv.load_prompts(tmp_path / "a.txt") == ["one", "two"]
    assert cv.load_prompts(tmp_path / "b.json") == ["x", "y"]
    assert cv.load_prompts(tmp_path / "c.json") == ["i", "j", "k"]
    with pytest.raises(ValueError, match="entry 0 has no prompt"):
        cv.load_prompts(tmp_path / "d.json")
    with pytest.raises(FileNotFoundError):
        cv.load_prompts(tmp_path / "missing.txt")


def test_load_prompts_real_bbh_file():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared" / "prompts" / "bbh_multistep_arithmetic_two" / "test.json"
    if not path.exists():
        pytest.skip("shared prompts not available")
    prompts = cv.load_prompts(path)
    assert len(prompts) == 250 and all(isinstance(p, str) and p for p in prompts)


def test_chat_template_true_uses_the_tokenizers_template_and_profiles_record_backend_and_hooks(nn_llama, tl_llama):
    import commandv_interp as cv

    prompts = ["w1 w2", "w3 w4 w5"]
    tok = nn_llama.tokenizer
    old = tok.chat_template
    tok.chat_template = "{% for m in messages %}w9 {{ m['content'] }} w8{% endfor %}"
    try:
        templated = cv.profile(nn_llama, prompts, chat_template=True, progress=False)
        by_hand = cv.profile(nn_llama, [f"w9 {p} w8" for p in prompts], progress=False)
        assert templated.prompts_fingerprint == by_hand.prompts_fingerprint
        assert torch.equal(templated[1], by_hand[1])
        assert torch.equal(nn_llama.encode(prompts, chat_template=True).input_ids,
                           nn_llama.encode([f"w9 {p} w8" for p in prompts]).input_ids)
    finally:
        tok.chat_template = old
    with pytest.raises(ValueError, match="chat_template=True needs a tokenizer with a chat template"):
        cv.profile(nn_llama, prompts, chat_template=True, progress=False)
    assert by_hand.extra["backend"] == "nnsight" and by_hand.extra["hook_points"]["1"] == "model.layers.1"
    tl = cv.profile(tl_llama, prompts, layers=[2], progress=False)
    from commandv_interp.access.fingerprint import weights_digest

    assert tl.extra == {"backend": "transformer_lens", "hook_points": {"2": "blocks.2.hook_out"},
                        "weights_digest": weights_digest(nn_llama)}  # both backends read the same weights
