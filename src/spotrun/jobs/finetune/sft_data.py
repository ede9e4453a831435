"""Instruction/response records -> token ids with labels on the response tokens only.

Records come through Hugging Face `datasets` (local json/jsonl/csv/parquet or a hub name). With a
chat template the prompt is the templated user turn (plus the assistant header) and the response is
the assistant turn; without one, "prompt\\n" + response + EOS. Prompt tokens get label -100, so the
loss is computed on the response only.
"""

from __future__ import annotations

import torch

from spotrun.jobs.finetune.data import load_pairs

IGNORE = -100


def load_records(data_cfg, repo_root: str, split: str) -> list[tuple[str, str]]:
    """(prompt, response) pairs of one split: the same files or hub name as the encoder's pairs."""
    prompts, responses = load_pairs(data_cfg, repo_root, split)
    return list(zip(prompts, responses, strict=True))


def encode(tokenizer, prompt: str, response: str, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one record, truncated to `max_length` tokens."""
    if tokenizer.chat_template:
        user = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            user + [{"role": "assistant", "content": response}], tokenize=False
        )
    else:
        head = prompt + "\n"
        full = head + response + (tokenizer.eos_token or "")
    if not full.startswith(head):  # a template that rewrites earlier turns: fall back to plain text
        head, full = prompt + "\n", prompt + "\n" + response + (tokenizer.eos_token or "")
    n_head = len(tokenizer(head, add_special_tokens=False)["input_ids"])
    ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
    labels = [IGNORE] * min(n_head, len(ids)) + ids[n_head:]
    return ids, labels


def encode_all(tokenizer, records, max_length: int) -> list[tuple[list[int], list[int]]]:
    """Every record that keeps at least one response token after truncation (else its loss is 0/0)."""
    encoded = (encode(tokenizer, p, r, max_length) for p, r in records)
    return [ex for ex in encoded if any(t != IGNORE for t in ex[1])]


def collate(examples, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest example; padding is masked and ignored by the loss."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
