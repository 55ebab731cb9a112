"""A saved transfer folder: its configuration and fingerprints, verified as a whole (every edited, missing,
swapped or truncated part refused with one line naming it), models checked by weights, replayed to the same digest,
and analyzed as what it applies (the polished adapter when it chose one; the donor's answers from its whole adapter).
Tiny models: the recipient is the donor in a rotated basis, the "other" recipient the same config rotated otherwise."""

import dataclasses
import json
import os
import shutil

import pytest
import torch

from conftest import random_adapter, random_prompts, rotated_llama, rotated_pair

import commandv_interp as cv
from commandv_interp.pipeline import TransferConfig, load_transfer
from commandv_interp.pipeline.agreement import donor_targets, score_responses, summarize
from commandv_interp.pipeline.applied import applied_edit, edit_attribution
from commandv_interp.pipeline.labels import transfer_label
from commandv_interp.manifest import write_manifest
from commandv_interp.pipeline.replay import replay_transfer
from commandv_interp.prompts import prompts_fingerprint

PROMPTS = random_prompts(32, seed=11)


@pytest.fixture(scope="module")
def pair(hf_llama, nn_llama):
    return rotated_pair(hf_llama, nn_llama, rotation_seed=7)


@pytest.fixture(scope="module")
def other_recipient(hf_llama):
    model, _ = rotated_llama(hf_llama[0], seed=8)  # the same config, other weights
    return cv.open_model(model, tokenizer=hf_llama[1], name="rotated-llama")


@pytest.fixture(scope="module")
def polished(pair):
    """A transfer whose choice is a polished paste (planted from its own stage-3 round when the search kept the
    paste as it is, so that every part of the folder is there)."""
    donor, recipient, adapter = pair
    t = cv.transfer(donor, recipient, adapter, PROMPTS, polish_steps=4, progress=False)
    if t.polished is None:
        name = next(n for n, c in t.considered.items() if c.stage == 3 and not n.startswith("scratch"))
        t = dataclasses.replace(t, polished=t.considered[name].edit, choice=name)
    assert t.converters is not None and t.polished is not None
    return t


@pytest.fixture(scope="module")
def saved(polished, tmp_path_factory):
    return polished.save(tmp_path_factory.mktemp("t") / "t")


def test_config_and_fingerprints_are_recorded_and_round_trip(pair, polished, saved):
    donor, recipient, adapter = pair
    assert polished.config == TransferConfig(polish_steps=4)
    assert TransferConfig.from_dict(polished.config.to_dict()) == polished.config
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        TransferConfig.from_dict(polished.config.to_dict() | {"colour": 1})
    with pytest.raises(ValueError, match=r"lacks keys \['seed'\]"):
        TransferConfig.from_dict({k: v for k, v in polished.config.to_dict().items() if k != "seed"})
    back = load_transfer(saved)
    assert back.config == polished.config and back.fingerprints == polished.fingerprints
    meta = json.loads((saved / "transfer.json").read_text())
    assert meta["config"] == polished.config.to_dict()
    assert meta["fingerprints"]["prompts"] == prompts_fingerprint(PROMPTS)
    assert meta["fingerprints"]["donor_adapter"] == adapter.digest()
    assert meta["fingerprints"]["recipient_model"]["config_hash"] == recipient.config_hash
    assert back.donor_adapter.digest() == adapter.digest()  # the whole adapter, apart from the pasted one
    assert cv.load_adapter(saved / "compiled").digest() == polished.polished.digest()


def _edit_json(path, **changes):
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def _reseal(folder):
    """Recompute the manifest, as someone editing the folder on purpose would."""
    (folder / "manifest.json").unlink()
    write_manifest(folder, {"kind": "commandv.transfer",
                            "config": json.loads((folder / "transfer.json").read_text())["config"]})


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _swap(a, b):
    a.rename(a.with_name("swap"))
    b.rename(a)
    a.with_name("swap").rename(b)


def _without_checksum(folder):
    meta = json.loads((folder / "manifest.json").read_text())
    del meta["checksum"]
    (folder / "manifest.json").write_text(json.dumps(meta))


def _other_converters(folder, other):
    shutil.copy(other / "converters.safetensors", folder / "converters.safetensors")


TAMPERS = {  # name: (edit of the folder, what the one-line refusal names)
    "alpha 50": (lambda f, o: _edit_json(f / "transfer.json", alpha=50.0), r"transfer\.json' was edited"),
    "edited positions": (lambda f, o: _edit_json(f / "transfer.json", positions="all"), r"transfer\.json' was edited"),
    "polished_digest null": (lambda f, o: _edit_json(f / "transfer.json", polished_digest=None),
                             r"transfer\.json' was edited"),
    "converters from another transfer": (_other_converters, r"converters\.safetensors' was edited, truncated"),
    "truncated candidates.csv": (lambda f, o: _truncate(f / "candidates.csv"), r"candidates\.csv' was edited"),
    "truncated polished weights": (lambda f, o: _truncate(next((f / "polished").glob("*.bin"))),
                                   r"polished/.*was edited, truncated or swapped"),
    "swapped adapters": (lambda f, o: _swap(f / "donor_adapter", f / "polished"), r"was edited, truncated or swapped"),
    "missing part": (lambda f, o: shutil.rmtree(f / "donor_adapter"), r"donor_adapter/.*is missing from"),
    "manifest deleted": (lambda f, o: (f / "manifest.json").unlink(), r"has no manifest\.json"),
    "manifest checksum deleted": (lambda f, o: _without_checksum(f), r"has no checksum"),
    "manifest edited": (lambda f, o: _edit_json(f / "manifest.json", config={}), r"manifest\.json' was edited"),
    "alpha 50, resealed": (lambda f, o: (_edit_json(f / "transfer.json", alpha=50.0), _reseal(f)), r"alpha is 50"),
    "positions, resealed": (lambda f, o: (_edit_json(f / "transfer.json", positions="all"), _reseal(f)),
                            r"positions 'all' differ"),
    "polished_digest null, resealed": (lambda f, o: (_edit_json(f / "transfer.json", polished_digest=None),
                                                     _reseal(f)), r"polished_digest None disagree"),
    "converters from another transfer, resealed": (lambda f, o: (_other_converters(f, o), _reseal(f)),
                                                   r"converters\.safetensors' is not the converters this transfer"),
    "truncated candidates.csv, resealed": (lambda f, o: (_truncate(f / "candidates.csv"), _reseal(f)),
                                           r"candidates\.csv' (does not list|cannot be read)"),
}


@pytest.fixture(scope="module")
def another(pair, tmp_path_factory):
    """Another transfer of the same pair on other prompts (its converters differ), as it came out."""
    donor, recipient, adapter = pair
    t = cv.transfer(donor, recipient, adapter, random_prompts(32, seed=12), polish_steps=4, progress=False)
    return t.save(tmp_path_factory.mktemp("o") / "o")


@pytest.mark.parametrize("name", list(TAMPERS))
def test_an_edited_missing_swapped_or_truncated_part_is_refused(name, saved, another, tmp_path):
    folder = tmp_path / "t"
    shutil.copytree(saved, folder)
    load_transfer(folder)  # the copy verifies
    tamper, message = TAMPERS[name]
    tamper(folder, another)
    with pytest.raises(ValueError, match=message) as caught:
        load_transfer(folder)
    assert "\n" not in str(caught.value)


def test_another_recipient_with_the_same_config_is_refused_by_its_weights(pair, other_recipient, saved):
    donor, recipient, _ = pair
    assert other_recipient.config_hash == recipient.config_hash
    load_transfer(saved, recipient)
    with pytest.raises(ValueError, match="weights digest"):
        load_transfer(saved, other_recipient)
    with pytest.raises(ValueError, match="weights digest"):
        edit_attribution(load_transfer(saved), donor, other_recipient, random_prompts(8, seed=3))


def test_save_replaces_an_earlier_transfer_folder_whole_and_refuses_other_folders(pair, polished, tmp_path):
    donor, recipient, adapter = pair
    folder = polished.save(tmp_path / "t")
    assert (folder / "polished").is_dir()
    plain = dataclasses.replace(polished, polished=None, choice=polished.choice.split("+polish/")[0])
    plain.save(folder)
    assert not (folder / "polished").exists() and load_transfer(folder).polished is None
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.md").write_text("keep me")
    with pytest.raises(ValueError, match="holds other files and is not a transfer folder"):
        polished.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "report.md").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_a_save_killed_midway_is_cleared_by_the_next_save(polished, tmp_path):
    """A kill between moving the earlier folder aside and putting the new one in place leaves ``.t.*.old/t`` and no
    ``t``; a kill while writing leaves ``.t.*.saving``. The next save puts the earlier folder back, then replaces it,
    and leaves nothing hidden behind."""
    folder = polished.save(tmp_path / "t")
    aside = tmp_path / ".t.k3j_9xq2.old"  # names as tempfile.mkdtemp makes them
    aside.mkdir()
    os.replace(folder, aside / "t")  # killed after moving the earlier folder aside
    (tmp_path / ".t.a8b7c6d5.saving").mkdir()
    (tmp_path / ".t.a8b7c6d5.saving" / "candidates.csv").write_text("half")
    (tmp_path / ".t.x.abcdefgh.saving").mkdir()  # the staging of a folder named `t.x`: not ours to remove
    polished.save(folder)
    assert load_transfer(folder).choice == polished.choice
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".t.x.abcdefgh.saving"]


def test_replay_reproduces_the_choice_and_the_digest(pair, other_recipient, another, saved, tmp_path):
    """Replayed on the same inputs, a transfer (and the distillation from scratch, all polish) comes out with the same
    choice and the same adapter digest; a planted other choice does not; other inputs are refused by name."""
    donor, recipient, adapter = pair
    prompts = random_prompts(32, seed=12)
    outcome, again = replay_transfer(another, donor, recipient, adapter, prompts)
    assert outcome.reproduced and again.config == load_transfer(another).config
    scratch = cv.transfer(donor, recipient, adapter, prompts, start="scratch", polish_steps=4, progress=False)
    outcome, _ = replay_transfer(scratch.save(tmp_path / "s"), donor, recipient, adapter, prompts)
    assert outcome.reproduced and outcome.choice.startswith("scratch+polish/4/lr=")
    assert outcome.digest == scratch.polished.digest()
    outcome, again = replay_transfer(saved, donor, recipient, adapter, PROMPTS)  # its polished choice was planted
    assert not outcome.same_choice and not outcome.same_digest and outcome.choice == again.choice
    with pytest.raises(ValueError, match="other prompts"):
        replay_transfer(another, donor, recipient, adapter, random_prompts(32, seed=99))
    with pytest.raises(ValueError, match="other recipient model"):
        replay_transfer(another, donor, other_recipient, adapter, prompts)


def _scoring_prompts(pair, prompts, config):
    """The transfer's own held-out scoring prompts (its split, made again by ``prepare``)."""
    from commandv_interp.pipeline.search import prepare

    return prepare(*pair, prompts, config.scoring_fraction, config.max_new_tokens, config.batch_size, config.seed,
                   config.profile_prompts).scoring


def test_the_analysis_scores_the_applied_polished_edit_as_the_search_did(pair, saved):
    """On the transfer's own scoring prompts, the attribution's whole-edit row reproduces the criterion the search
    gave the chosen (polished) candidate: the analysis measures the edit that was applied, not the paste before it."""
    donor, recipient, _ = pair
    t = load_transfer(saved, recipient)
    assert applied_edit(t).edit.digest() == t.polished.digest() and not applied_edit(t).is_paste
    assert transfer_label(t) == "Command-V paste + 4 distillation steps"
    frame = edit_attribution(t, donor, recipient, _scoring_prompts(pair, PROMPTS, t.config))
    got = frame[(frame.condition == "all") & (frame.metric == "criterion")].value.item()
    row = t.candidates[(t.candidates.candidate == t.choice) & (t.candidates.n_scoring == t.candidates.n_scoring.max())]
    assert got == pytest.approx(float(row.criterion.iloc[-1]), abs=1e-9)
    assert set(frame.condition) == {"none", "all", "single", "leave_one_out"}


def test_a_layer_subset_paste_is_analyzed_against_the_whole_adapter(pair, tmp_path):
    """The donor's adapter acts only at layer 2 here, and the planted choice pastes layer 0 alone: the pasted subset
    changes none of the donor's answers, yet the saved folder keeps the whole adapter and the analysis takes the
    donor's answers from it."""
    donor, recipient, _ = pair
    adapter = random_adapter(donor.d_model, layers=(0, 2), scale=0.6, seed=3)
    with torch.no_grad():
        for p in adapter.interventions[0].parameters():
            p.zero_()
    t = cv.transfer(donor, recipient, adapter, PROMPTS, polish_steps=0, progress=False)
    subset = dataclasses.replace(t, adapter=adapter.restricted([0]), converters=t.converters.restricted(adapter, [0]),
                                 choice=f"{t.choice}/layers=0")
    back = load_transfer(subset.save(tmp_path / "t"), recipient)
    assert back.adapter.layers == [0] and back.donor_adapter.digest() == adapter.digest()
    prompts = random_prompts(16, seed=5)
    with pytest.raises(ValueError, match="changes none"):
        donor_targets(donor, back.adapter, prompts, 8)
    frame = edit_attribution(back, donor, recipient, prompts)
    targets = donor_targets(donor, adapter, prompts, 8)
    plain = summarize(score_responses(recipient, targets, None), targets.changed)["criterion"]
    assert frame[(frame.condition == "none") & (frame.metric == "criterion")].value.item() == pytest.approx(plain)
    assert transfer_label(back) == "Command-V paste"
