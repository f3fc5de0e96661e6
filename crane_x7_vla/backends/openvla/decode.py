"""What training and inference share after the forward pass: the loss on action tokens,
accuracy, and greedy decoding restricted to the action tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crane_x7_vla.backends.openvla.model import IGNORE, VLA


def forward(model, vla: VLA, batch: dict, pixels: torch.Tensor, **extra):
    kwargs = {k: v for k, v in batch.items() if k != "labels"}
    return model(pixel_values=pixels, **kwargs, **extra)


def next_token_logits(logits: torch.Tensor, input_len: int) -> torch.Tensor:
    """Logits predicting input tokens 1..L-1, aligned with them.

    OpenVLA inserts its visual tokens into the sequence (logits longer than input_ids by
    that count, all after BOS); Llava/PaliGemma keep placeholders (same length)."""
    offset = logits.shape[1] - input_len
    return logits[:, offset : offset + input_len - 1]


def action_loss(logits: torch.Tensor, batch: dict, first_action_id: int, label_sigma: float = 0.0):
    """Cross-entropy on the action tokens only; also returns argmax predictions (restricted
    to the action range) and the label mask, for accuracy and L1.

    With `label_sigma` > 0 (in bins) each action token is trained against a Gaussian over
    the neighbouring bins (adjacent ids are adjacent bins) instead of its one bin, so the
    loss knows that bin 101 is a better answer than bin 3 when 100 was demonstrated."""
    labels = batch["labels"][:, 1:]
    pred_logits = next_token_logits(logits, batch["input_ids"].shape[1])
    mask = labels != IGNORE
    chosen = pred_logits[mask].float()
    target = labels[mask]
    if label_sigma > 0:
        log_p = F.log_softmax(chosen, dim=-1)[:, first_action_id:]
        offsets = torch.arange(log_p.shape[1], device=chosen.device) - (target - first_action_id)[:, None]
        soft = torch.softmax(-0.5 * (offsets.float() / label_sigma) ** 2, dim=-1)
        loss = -(soft * log_p).sum(-1).mean()
    else:
        loss = F.cross_entropy(chosen, target)
    restricted = chosen[:, first_action_id:].argmax(-1) + first_action_id
    return loss, restricted, target, mask


@torch.no_grad()
def generate_action_ids(model, vla: VLA, batch: dict, pixels: torch.Tensor, n_tokens: int, first_id: int,
                        middle_after: int = 0) -> torch.Tensor:
    """Greedy decoding of `n_tokens` tokens, each restricted to ids [first_id, vocab_size).

    `batch` holds prompts of equal length (no padding). With `middle_after` > 0 and
    `batch['middle_ids']` (B, M) (the goal written before the state, see
    `model.build_batch`), those tokens are fed after the first `middle_after` tokens are
    written; they are inputs, not part of the result. Uses the KV cache when the model
    returns one, otherwise re-runs the whole sequence."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    middle = batch.get("middle_ids") if middle_after else None
    extra = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, use_cache=True, **extra)
    chosen = []
    for k in range(n_tokens):
        last = out.logits[:, -1, first_id : vla.vocab_size].float()
        tok = last.argmax(-1) + first_id
        chosen.append(tok)
        if k == n_tokens - 1:
            break
        step = tok[:, None]
        if middle is not None and k == middle_after - 1:
            step = torch.cat([step, middle.to(step.device)], dim=1)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        mask = torch.cat([mask, torch.ones_like(step)], dim=1)
        if cache is not None:
            step_extra = {"token_type_ids": torch.ones_like(step)} if extra else {}
            out = model(input_ids=step, attention_mask=mask, use_cache=True, **{vla.cache_kw: cache}, **step_extra)
        else:
            ids = torch.cat([ids, step], dim=1)
            if extra:
                extra["token_type_ids"] = torch.cat([extra["token_type_ids"], torch.ones_like(step)], 1)
            out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, **extra)
    return torch.stack(chosen, dim=1)
