"""zoo.generated: worlds from seeds — grammar, corpus, judge, tokenizers, architectures, build and cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from commandv_interp.access import open_model
from commandv_interp.zoo.generated import (DEV_SEEDS, FAMILIES, PAIRS, TEST_SEEDS, TINY, build_world, grammar,
                                           pair_plan, world_folder)
from commandv_interp.zoo.generated.architectures import DEPTHS, WIDTHS, ModelPlan, build_config
from commandv_interp.zoo.generated.build import adapter_layers
from commandv_interp.zoo.generated.corpus import build_corpus, examples, items, prompts, respond_plain, target
from commandv_interp.zoo.generated.judge import RATES, score
from commandv_interp.zoo.generated.tokenization import TOKENIZER_KINDS, build_tokenizer


def test_seeds_cover_every_behavior_and_pair_shape_and_split_cleanly():
    assert set(DEV_SEEDS).isdisjoint(TEST_SEEDS)
    for seeds in (DEV_SEEDS, TEST_SEEDS):
        assert {grammar(s).behavior for s in seeds} == set(RATES)
        assert {pair_plan(s)[0].pair for s in seeds} == set(PAIRS)
    with pytest.raises(ValueError, match="seed"):
        grammar(-1)


@pytest.mark.parametrize("attempts", [(0, 0), (1, 0), (0, 2), (3, 3)])
def test_plans_stay_in_range_and_keep_their_shape(attempts):
    plans = [pair_plan(s, attempts) for s in range(120)]
    for donor, recipient in plans:
        for p in (donor, recipient):
            assert p.n_layers in DEPTHS and p.d_model in WIDTHS and p.n_layers * p.d_model <= 1024
            assert p.family != "qwen2" or p.tokenizer == "byte-bpe-320"  # transformers' Qwen2Tokenizer
        if donor.pair == "deep→shallow":
            assert donor.n_layers > recipient.n_layers and donor.family != recipient.family
        elif donor.pair == "shallow→deep":
            assert donor.n_layers < recipient.n_layers and donor.family != recipient.family
        else:
            assert donor.family == recipient.family and donor.name != recipient.name
    assert {p.family for pair in plans for p in pair} == set(FAMILIES)
    assert {p.tokenizer for pair in plans for p in pair} == set(TOKENIZER_KINDS)
    assert sum(d.n_layers * d.d_model <= 512 and r.n_layers * r.d_model <= 512 for d, r in plans) > 0.6 * len(plans)


def test_a_redrawn_plan_changes_only_its_role_and_is_deterministic():
    for seed in range(30):
        first = pair_plan(seed)
        assert pair_plan(seed, (0, 0)) == first
        donor_again, recipient_again = pair_plan(seed, (1, 0)), pair_plan(seed, (0, 1))
        assert donor_again[1] == first[1] and recipient_again[0] == first[0]  # the other role is kept
        assert pair_plan(seed, (1, 0)) == donor_again  # the same redraw every time
        assert len({pair_plan(seed, (k, 0))[0] for k in range(6)}) > 1  # redraws draw something else
    with pytest.raises(ValueError, match="attempts"):
        pair_plan(0, (-1, 0))


def test_worlds_differ_in_words_and_templates():
    a, b = grammar(0), grammar(3)
    assert a.behavior == b.behavior == "refusal"
    assert not set(a.objects) & set(b.objects) or a.objects != b.objects
    assert a.frames != b.frames and a.cue != b.cue and a.roles != b.roles


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corpus_never_shows_a_test_prompt_and_splits_are_disjoint(seed):
    g = grammar(seed)
    train, test = items(g, "train"), items(g, "test")
    assert len(train) == 256 and len(test) == 160
    assert not {i.prompt for i in train} & {i.prompt for i in test}
    docs = build_corpus(g, 0, 3000)
    test_prompts = {i.prompt for i in test}
    assert not any(d.startswith(p) or f" {p} " in d for d in docs for p in test_prompts)
    assert any(g.cue in d for d in docs)  # the behavior is latent: shown under its cue
    if g.behavior != "steps":  # held-out objects: in the corpus, never in the adapters' training split
        held = g.held_objects
        assert not any(w in held for i in train for w in i.prompt.split())
        assert all(any(o in d.split() for d in docs) for o in held)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_judge_scores_targets_and_plain_answers_exactly(seed):
    g = grammar(seed)
    its = items(g, "test")[:40]
    target_rate, side_rate = RATES[g.behavior]
    on = score(g, its, [target(g, i) for i in its])
    off = score(g, its, [respond_plain(g, i) for i in its])
    if g.behavior == "refusal":
        assert on == {"refusal": 1.0, "false_refusal": 0.0} and off == {"refusal": 0.0, "false_refusal": 0.0}
        assert score(g, its, [" ".join(g.refusal)] * len(its)) == {"refusal": 1.0, "false_refusal": 1.0}
        return
    assert on == {target_rate: 1.0, side_rate: 1.0}
    assert off == {target_rate: 0.0, side_rate: 1.0}  # plain answers are right, without the behavior
    cut = [" ".join(target(g, i).split()[:-3]) for i in its]  # the whole answer is judged: a cut one fails
    assert score(g, its, cut)[target_rate] == 0.0
    wrong = [target(g, i).replace(i.truth[0], g.stations[0] if g.behavior == "steps" else "zz") for i in its]
    assert score(g, its, wrong)[side_rate] < 1.0


def test_persona_responses_are_long_and_step_responses_walk_every_station():
    p = grammar(2)
    assert min(len(target(p, i).split()) for i in items(p, "test")) >= 18
    s = grammar(1)
    for prompt, response in examples(s)[:20]:
        words = response.split()
        k = sum(w in s.counts for w in words)  # each step opens with its ordinal; the last is the question's
        assert k in (2, 3, 4) and s.counts[k - 1] in prompt.split() and words[-3] == s.step_words[2]
        assert words[0::5][:k] == list(s.counts[:k])


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_tokenizers_round_trip_the_world(kind):
    g = grammar(5)
    tok = build_tokenizer(kind, g)
    docs = [d.removesuffix(" <eos>") for d in build_corpus(g, 3, 20)]
    for d in docs:
        assert tok.decode(tok(d)["input_ids"], skip_special_tokens=True).strip() == d
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<bos>", "<eos>", "<unk>"]
    if kind.startswith("bpe-"):
        size = int(kind.split("-")[1])  # merges stop early once every word of the world is one token
        assert len(tok) == size if size < 128 else len(build_tokenizer("bpe-64", g)) < len(tok) <= size
    if kind == "char":
        assert all(len(t) == 1 for t in tok.convert_ids_to_tokens(list(range(4, len(tok)))))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_opens_with_its_planned_depth_and_width(family):
    from transformers import AutoModelForCausalLM

    plan = ModelPlan("donor", family, 3, 48, "word", "same-family")
    model = AutoModelForCausalLM.from_config(build_config(plan, 50, 64))
    tok = build_tokenizer("word", grammar(0))
    access = open_model(model, tokenizer=tok)
    assert (access.n_layers, access.d_model) == (3, 48)


def test_adapter_layers_are_a_few_spread_over_the_depth():
    for n in DEPTHS:
        layers = adapter_layers(n)
        assert layers[0] == 0 and layers == sorted(set(layers)) and max(layers) < n and 1 <= len(layers) <= 4


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("world.json", "commandv_metadata.json")}  # these two hold timings


def test_build_is_deterministic_per_seed_and_cached_atomically(tmp_path):
    first = build_world(1, config=TINY, cache_dir=tmp_path / "a")
    again = build_world(1, config=TINY, cache_dir=tmp_path / "b")
    assert _digests(first.folder) == _digests(again.folder)  # tokenizers, weights, adapters
    assert any(k.endswith("model.safetensors") for k in _digests(first.folder))
    stamp = (first.folder / "world.json").stat().st_mtime_ns
    cached = build_world(1, config=TINY, cache_dir=tmp_path / "a")  # loaded, not rebuilt
    assert (cached.folder / "world.json").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "a").iterdir()] == [first.folder.name]  # no temporary folder left
    assert first.folder == world_folder(1, TINY, tmp_path / "a")
    assert first.donor_model.n_layers == pair_plan(1)[0].n_layers
    assert {r["condition"] for r in first.record["behavior_table"]} == {"base", "cue", "adapter"}


@pytest.mark.slow  # pretrains a few models (a few steps each)
def test_budget_sets_the_steps_and_unaffordable_plans_are_set_aside(tmp_path, monkeypatch):
    from dataclasses import replace

    from commandv_interp.zoo.generated import build
    from commandv_interp.zoo.generated.build import prepare

    config = replace(TINY, pretrain_flops=4e10, min_steps=8, max_steps=10)
    plans = [pair_plan(7, (k, 0))[0] for k in range(3)]  # qwen2 5×192, 8×128, 4×80
    prepared = [prepare(p, 7, config) for p in plans]
    assert [p.affordable for p in prepared] == [False, False, True]
    for p in prepared:  # steps = what the budget pays for, capped
        assert p.steps == min(10, int(4e10 // p.step_flops)) and p.affordable == (p.steps >= 8)
        assert p.step_flops == pytest.approx(6 * p.n_params * 32 * sum(map(len, p.docs)) / len(p.docs))
    world = build_world(7, config=config, cache_dir=tmp_path)
    donor = world.record["donor"]
    costly = [s for s in donor["set_aside"] if s["why"] == "cost"]
    assert [s["attempt"] for s in costly] == [0, 1] and donor["attempt"] == 2
    assert donor["pretrain"]["steps"] == prepared[2].steps == 10 and donor["plan"] == plans[2].to_dict()
    monkeypatch.setattr(build, "MAX_DRAWS", 3)
    with pytest.raises(RuntimeError, match="pretrain_flops"):
        build_world(7, config=replace(config, pretrain_flops=1.0), cache_dir=tmp_path / "none")


@pytest.mark.slow  # pretrains and checks four models (a few steps each)
def test_a_model_that_fails_the_check_is_replaced_and_the_best_kept(tmp_path):
    from dataclasses import replace

    config = replace(TINY, check_rate=1.01, max_attempts=2)  # nothing can pass
    world = build_world(4, config=config, cache_dir=tmp_path)
    for i, role in enumerate(("donor", "recipient")):
        rec = world.record[role]
        failed = [s for s in rec["set_aside"] if s["why"] == "check"]
        assert len(failed) == config.max_attempts - 1 and not rec["check"]["passed"]
        assert rec["check"]["prompts"] == f"train[:{TINY.check_prompts}]"  # train prompts, never test ones
        kept = pair_plan(4, (world.record["donor"]["attempt"], rec["attempt"]) if i else (rec["attempt"], 0))[i]
        assert rec["plan"] == kept.to_dict() and all(s["plan"] != rec["plan"] for s in failed)
    assert sorted(p.name for p in world.folder.iterdir()) == ["donor", "recipient", "world.json"]
    assert world.recipient_model.n_layers == world.record["recipient"]["plan"]["n_layers"]


def test_cache_folder_follows_argument_then_environment(tmp_path, monkeypatch):
    from commandv_interp.zoo.generated import cache_root

    monkeypatch.setenv("COMMANDV_WORLDS_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env" and cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("COMMANDV_WORLDS_DIR")
    assert cache_root() == Path.home() / ".cache" / "commandv_interp" / "worlds"


# ---------------------------------------------------------------- slow tier: real builds (about 2–3 CPU minutes a world)
CI_SEED = 0  # a refusal world (qwen3 8×64 word-level → gpt2 2×64 BPE-128), the one CI builds


@pytest.fixture(scope="module")
def ci_world():
    return build_world(CI_SEED)  # cached under $COMMANDV_WORLDS_DIR or ~/.cache/commandv_interp/worlds


@pytest.mark.slow
def test_a_generated_world_has_a_latent_behavior_and_adapters_that_reach_it(ci_world):
    table = {(r["model"], r["condition"], r["metric"]): r["value"] for r in ci_world.record["behavior_table"]}
    target_rate, side_rate = ci_world.rates
    for role in ("donor", "recipient"):
        assert table[(role, "base", target_rate)] <= 0.2  # off without the cue ...
        assert table[(role, "cue", target_rate)] >= 0.6  # ... on under it: latent in pretraining
        assert table[(role, "adapter", target_rate)] >= 0.9  # the donor adapter and the recipient's finetune
        assert table[(role, "adapter", side_rate)] <= 0.1
        check = ci_world.record[role]["check"]  # the build-time check passed, on train prompts
        assert check["passed"] and check["adapter"][target_rate] >= 0.9 and check["prompts"] == "train[:48]"
        assert {s["why"] for s in ci_world.record[role]["set_aside"]} <= {"cost", "check"}


@pytest.mark.slow
def test_transfer_on_a_generated_world_meets_the_finetune_bar(ci_world):
    """What CI runs end to end: one world built from its seed, one ``cv.transfer`` with its defaults."""
    from commandv_interp.pipeline.label_free import transfer

    w = ci_world
    result = transfer(w.donor_model, w.recipient_model, w.adapter, w.prompts("train")[:128], progress=False)
    with result.paste():
        rates = w.evaluate(w.recipient_model, limit=80)
    table = {(r["model"], r["condition"], r["metric"]): r["value"] for r in w.record["behavior_table"]}
    target_rate, side_rate = w.rates
    assert rates[target_rate] >= 0.9 * table[("recipient", "adapter", target_rate)]
    assert rates[side_rate] <= table[("recipient", "adapter", side_rate)] + 0.05  # 80 prompts: ~2 benign misses
    assert result.flops < 0.2 * w.record["recipient"]["adapter"]["flops"]
