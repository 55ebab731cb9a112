"""`commandv generate MODEL PROMPTS --edit X`: with a transfer folder it writes, prompt for prompt, what
``Transfer.paste()`` makes the recipient generate in Python; a compiled adapter folder gives what ``apply_adapter``
does, a donor adapter with converters what ``cv.paste`` does; an edit that cannot act on the model exits 2 with one
error line."""

import json

import pytest
from typer.testing import CliRunner

from conftest import random_adapter, random_prompts

import commandv_interp as cv
from commandv_interp.app.cli import app
from commandv_interp.pipeline.labels import transfer_label

NEW_TOKENS = 6


@pytest.fixture(scope="module")
def setup(tiny_dir, tmp_path_factory):
    """A transfer llama → gpt2 (tiny checkpoints), saved; the recipient opened from its folder as the CLI opens it."""
    root = tmp_path_factory.mktemp("generate")
    donor, recipient = cv.open_model(tiny_dir / "llama"), cv.open_model(tiny_dir / "gpt2")
    adapter = random_adapter(donor.d_model, layers=(0, 2), scale=1.0, seed=1)
    result = cv.transfer(donor, recipient, adapter, random_prompts(16, seed=12), polish_steps=4, progress=False)
    result.save(root / "t1")
    prompts = random_prompts(10, seed=13)
    (root / "prompts.txt").write_text("\n".join(prompts) + "\n")
    return root, recipient, result, prompts, (donor, adapter)


def _generate(root, tiny_dir, edit, out, *extra):
    run = CliRunner().invoke(app, ["generate", str(tiny_dir / "gpt2"), str(root / "prompts.txt"), "--edit", str(edit),
                                   "--out", str(out), "--max-new-tokens", str(NEW_TOKENS), "--json", *extra])
    return run, [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def test_a_transfer_folder_generates_what_transfer_paste_does(setup, tiny_dir, tmp_path):
    root, recipient, result, prompts, _ = setup
    with result.paste(recipient):
        expected = recipient.generate(recipient.encode(prompts), max_new_tokens=NEW_TOKENS)
    plain = recipient.generate(recipient.encode(prompts), max_new_tokens=NEW_TOKENS)
    run, rows = _generate(root, tiny_dir, root / "t1", tmp_path / "t1.jsonl")
    assert run.exit_code == 0, run.output
    assert [r["prompt"] for r in rows] == prompts
    assert [r["output"] for r in rows] == expected
    assert expected != plain  # the edit changes what the recipient says, so equality is not vacuous
    assert json.loads(run.stdout)["edit"] == transfer_label(result)


def test_a_compiled_folder_and_a_donor_adapter_with_converters(setup, tiny_dir, tmp_path):
    root, recipient, result, prompts, (donor, adapter) = setup
    cv.save_adapter(result.compile(), root / "compiled")
    with cv.apply_adapter(recipient, result.compile()):
        compiled = recipient.generate(recipient.encode(prompts), max_new_tokens=NEW_TOKENS)
    run, rows = _generate(root, tiny_dir, root / "compiled", tmp_path / "c.jsonl")
    assert run.exit_code == 0, run.output
    assert [r["output"] for r in rows] == compiled
    fit = random_prompts(48, seed=14)
    donor_profile = cv.profile(donor, fit, progress=False)
    recipient_profile = cv.profile(recipient, fit, progress=False)
    converters = cv.fit_converters(donor_profile, recipient_profile,
                                   cv.match_layers(donor_profile, recipient_profile, "depth", adapter.layers), "ridge")
    cv.save_adapter(adapter, root / "donor_adapter")
    converters.save(root / "conv.safetensors")
    with cv.paste(recipient, adapter, converters):
        pasted = recipient.generate(recipient.encode(prompts), max_new_tokens=NEW_TOKENS)
    run, rows = _generate(root, tiny_dir, root / "donor_adapter", tmp_path / "p.jsonl", "--converters",
                          str(root / "conv.safetensors"))
    assert run.exit_code == 0, run.output
    assert [r["output"] for r in rows] == pasted


def test_an_edit_that_cannot_act_on_the_model_exits_2(setup, tiny_dir, tmp_path):
    root, recipient, _, _, _ = setup
    cv.save_adapter(random_adapter(recipient.d_model + 8, layers=(0,)), root / "wide")
    run, rows = _generate(root, tiny_dir, root / "wide", tmp_path / "w.jsonl")
    assert run.exit_code == 2 and not rows
    errors = [line for line in run.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "needs --converters" in errors[0], run.output
