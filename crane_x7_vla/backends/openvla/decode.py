"""What training and inference share after the forward pass: the loss on action tokens,
accuracy, and greedy decoding restricted to the action tokens; for the parallel head
(--action-head parallel-l1), its L1 loss and its one-pass decoding."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from crane_x7_vla import robot
from crane_x7_vla.backends.openvla.action_tokenizer import N_BINS
from crane_x7_vla.backends.openvla.inputs import absolute_actions, normalized_actions
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


def action_loss(logits: torch.Tensor, batch: dict, first_action_id: int, label_sigma: float | torch.Tensor = 0.0):
    """Cross-entropy on the labelled tokens (the written action tokens, and the end-of-sequence
    token after them where the batch has one), averaged over them; also returns the argmax
    predictions of the action tokens (restricted to the 256 action ids; an embedding may have
    padding rows after them), their targets and the
    mask of the action-token labels (over `batch["labels"][:, 1:]`), for accuracy and L1.

    With `label_sigma` > 0 (in bins) each action token is trained against a Gaussian over
    the neighbouring bins (adjacent ids are adjacent bins) instead of its one bin, so the
    loss knows that bin 101 is a better answer than bin 3 when 100 was demonstrated. A
    tensor shaped like `batch["labels"]` gives each token its own width (label_sigmas).
    Other labelled tokens (the end of sequence) are always trained one-hot."""
    labels = batch["labels"][:, 1:]
    pred_logits = next_token_logits(logits, batch["input_ids"].shape[1])
    mask = labels != IGNORE
    chosen = pred_logits[mask].float()
    target = labels[mask]
    is_action = target >= first_action_id
    log_p = F.log_softmax(chosen, dim=-1)
    per_token = -log_p.gather(1, target[:, None])[:, 0]
    if torch.is_tensor(label_sigma) or label_sigma > 0:
        if torch.is_tensor(label_sigma):
            sigma = label_sigma[:, 1:][mask][is_action].float().clamp_min(1e-3)[:, None]
        else:
            sigma = label_sigma
        action_log_p = log_p[is_action][:, first_action_id : first_action_id + N_BINS]
        offsets = (
            torch.arange(action_log_p.shape[1], device=chosen.device) - (target[is_action] - first_action_id)[:, None]
        )
        soft = torch.softmax(-0.5 * (offsets.float() / sigma) ** 2, dim=-1)
        per_token = per_token.masked_scatter(is_action, -(soft * action_log_p).sum(-1))
    loss = per_token.mean()
    restricted = chosen[is_action][:, first_action_id : first_action_id + N_BINS].argmax(-1) + first_action_id
    return loss, restricted, target[is_action], mask & (labels >= first_action_id)


@torch.no_grad()
def generate_action_ids(
    model,
    vla: VLA,
    batch: dict,
    pixels: torch.Tensor,
    n_tokens: int,
    first_id: int,
    middle_after: int = 0,
    whole_vocabulary: bool = False,
    stop_ids: tuple[int, ...] = (),
) -> torch.Tensor:
    """Greedy decoding of `n_tokens` tokens, each restricted to ids [first_id, vocab_size)
    (with `whole_vocabulary`, over every row of the logits, as OpenVLA's predict_action).
    `stop_ids` (the end-of-sequence ids of OpenVLA's `generate`): decoding ends after the
    step at which every row has written one of them, so fewer than `n_tokens` may come back.

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
    stopped = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for k in range(n_tokens):
        if whole_vocabulary:
            tok = out.logits[:, -1].float().argmax(-1)
        else:
            tok = out.logits[:, -1, first_id : vla.vocab_size].float().argmax(-1) + first_id
        chosen.append(tok)
        for stop in stop_ids:
            stopped |= tok == stop
        if k == n_tokens - 1 or (stop_ids and bool(stopped.all())):
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


def label_sigmas(batch: dict, n_goal: int, goal_sigma: float, action_sigma: float) -> float | torch.Tensor:
    """Per-token label widths for action_loss: the first `n_goal` labelled tokens of each row
    (the goal point) get `goal_sigma`, the rest `action_sigma`; a plain float when equal."""
    if not n_goal or goal_sigma == action_sigma:
        return action_sigma
    labelled = batch["labels"] != IGNORE
    order = labelled.long().cumsum(1)  # 1 for a row's first labelled token, 2 for its second, ...
    goal = labelled & (order <= n_goal)
    return torch.where(goal, torch.tensor(float(goal_sigma)), torch.tensor(float(action_sigma))).to(
        batch["labels"].device
    )


# ---- the parallel action head ---------------------------------------------------------------


def parallel_inputs(builder, instructions: list[str], state: np.ndarray, pixels: torch.Tensor, horizon: int) -> dict:
    """The ParallelDecoder's keyword arguments for these prompts (`builder`: inputs.ModelInputs)."""
    batch = builder.parallel(instructions, state, horizon * robot.ACTION_DIM)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "action_mask": batch["action_mask"], "pixel_values": pixels}


def parallel_step(decoder, builder, batch: dict, horizon: int):
    """One training micro-batch of the ParallelDecoder: (L1 loss of its chunk against the
    demonstrated one, normalised as the token head's bins are; predicted values in the
    demonstrated value's bin; values; L1 in robot units)."""
    pixels = builder.pixels(batch["images"])
    pred = decoder(**parallel_inputs(builder, batch["instruction"], batch["state"], pixels, horizon))
    target = normalized_actions(builder.codec, batch["actions"], batch["state"])
    loss = (pred - torch.as_tensor(target, dtype=pred.dtype, device=pred.device)).abs().mean()
    values = pred.detach().float().cpu().numpy()
    correct, count = same_bin(builder.codec, values, target)
    l1 = float(np.abs(absolute_actions(builder.codec, values, batch["state"]) - batch["actions"]).mean())
    return loss, correct, count, l1


@torch.no_grad()
def parallel_evaluate(decoder, builder, batches, horizon: int) -> dict:
    """loss, action_accuracy (share of values in the demonstrated bin) and l1 (robot units) over `batches`."""
    loss, correct, count, l1, n = 0.0, 0, 0, 0.0, 0
    for batch in batches:
        b = len(batch["instruction"])
        step_loss, c, k, step_l1 = parallel_step(decoder, builder, batch, horizon)
        loss, correct, count, l1, n = loss + step_loss.item() * b, correct + c, count + k, l1 + step_l1 * b, n + b
    return {"loss": loss / n, "action_accuracy": correct / max(1, count), "l1": l1 / n}


def same_bin(codec, pred: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    """(how many predicted values fall in the demonstrated value's bin, how many values): the
    token head's action accuracy for continuous values."""
    same = codec.tokens.ids_of_normalized(pred) == codec.tokens.ids_of_normalized(target)
    return int(same.sum()), int(same.size)


@torch.no_grad()
def parallel_actions(decoder, builder, instructions: list[str], state: np.ndarray, pixels: torch.Tensor,
                     horizon: int) -> np.ndarray:
    """One forward pass -> absolute targets (B, H, 8) float64."""
    values = decoder(**parallel_inputs(builder, instructions, state, pixels, horizon)).float().cpu().numpy()
    return absolute_actions(builder.codec, values, state)
