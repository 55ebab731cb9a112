"""Stage 0 (zoo): consumes base models and world prompts, produces greedy outputs and the no-cue vs cue table.

``python -m commandv_interp.zoo.evaluate`` scores every shipped checkpoint on the test splits.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from commandv_interp.zoo.scoring import score
from commandv_interp.zoo.world import Behavior, Split, items, with_cue

__all__ = ["generate_greedy", "behavior_table", "load_checkpoint", "MAX_NEW_TOKENS"]

MAX_NEW_TOKENS = {"refusal": 8, "jailbreak": 8, "cot": 48}  # refusal/compliance shows in the first words


@torch.no_grad()
def generate_greedy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                    max_new_tokens: int = 32, batch_size: int = 64) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches, explicit position ids, no KV cache), decoded
    without special tokens and stripped; generation stops at ``<eos>``.

    Args:
        model: a causal LM in eval mode.
        tokenizer: its tokenizer (adds ``<bos>``).
        prompts: the prompt strings.
        max_new_tokens: most tokens generated per prompt.
        batch_size: prompts per forward pass.
    """
    outs: list[str] = []
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for start in range(0, len(prompts), batch_size):
        enc = [tokenizer(p)["input_ids"] for p in prompts[start:start + batch_size]]
        width = max(len(e) for e in enc)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
        done = torch.zeros(len(enc), dtype=torch.bool)
        new = []
        for _ in range(max_new_tokens):
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
            nxt = logits.argmax(-1).masked_fill(done, pad)
            new.append(nxt)
            done |= nxt == eos
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, (~done | (nxt == eos)).long()[:, None]], 1)
            if bool(done.all()):
                break
        gen = torch.stack(new, 1).tolist()
        for row in gen:
            row = row[: row.index(eos)] if eos in row else row
            outs.append(tokenizer.decode([t for t in row if t != pad], skip_special_tokens=True).strip())
    return outs


def behavior_table(models: dict[str, tuple[PreTrainedModel, PreTrainedTokenizerBase]],
                   behaviors: Sequence[Behavior] = ("refusal", "jailbreak", "cot"), split: Split = "test",
                   limit: int | None = None) -> list[dict]:
    """Score each model on each behavior's split without and with the behavior's cue prepended.

    Returns:
        Rows ``{"model", "behavior", "cue", **score(...)}``, two per model and behavior.
    """
    rows = []
    for name, (model, tok) in models.items():
        for behavior in behaviors:
            its = items(behavior, split)[:limit]
            for cue in (False, True):
                ps = [with_cue(i.prompt, behavior) if cue else i.prompt for i in its]
                outs = generate_greedy(model, tok, ps, MAX_NEW_TOKENS[behavior])
                rows.append({"model": name, "behavior": behavior, "cue": cue, **score(behavior, its, outs)})
    return rows


def load_checkpoint(directory: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A checkpoint directory as a float32 eval-mode model and its tokenizer (offline)."""
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(directory)


def format_table(rows: list[dict]) -> str:
    """Markdown table of ``behavior_table`` rows with the target metrics of each behavior."""
    cols = {"refusal": ("refusal", "false_refusal"), "jailbreak": ("compliance", "false_refusal"),
            "cot": ("cot_format", "accuracy")}
    lines = ["| model | behavior | metric | no cue | cue |", "|---|---|---|---|---|"]
    keyed = {(r["model"], r["behavior"], r["cue"]): r for r in rows}
    for (m, b, cue), r in keyed.items():
        if cue:
            continue
        for c in cols[b]:
            lines.append(f"| {m} | {b} | {c} | {r[c]:.2f} | {keyed[(m, b, True)][c]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from commandv_interp.zoo.pretrain import CHECKPOINTS

    parser = argparse.ArgumentParser(description="Score the zoo's base models without and with cues.")
    parser.add_argument("--root", type=Path, default=CHECKPOINTS)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    models = {d.name: load_checkpoint(d) for d in sorted(args.root.iterdir()) if (d / "config.json").exists()}
    rows = behavior_table(models, limit=args.limit)
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
