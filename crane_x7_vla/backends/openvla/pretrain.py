"""The vision-language stage of a tiny preset: learn to see the table before learning to act.

OpenVLA starts from a vision-language model whose encoder has seen millions of pictures
and which can say where things are; a preset built from a config starts from random
weights. Trained only on a few hundred demonstrations, its vision tower memorises the few
hundred table layouts and never learns to find the named cube in a new one (measured with
bench/vision_probe.py with 8-pixel patches: held-out error at chance level after 400 scenes,
0.6 cm after 3000).

This stage gives the preset that pretraining in miniature, on scenes of the simulated task
rendered from seeds far from the demonstrations and from the evaluation (half of them with
the arm in a random pose, hiding parts of the table as during a demonstration):

1. vision: the tower, with a read-out that is dropped afterwards, regresses where "the
   {colour} {object}" is in the picture (measured with 8-pixel patches: held-out error of a
   64x64 picture 3.0 pixels after 1,500 steps, 1.0 after 4,000);
2. answers (optional, `answer_steps`): the language model and projector answer "point to
   the {colour} {object}" with two location tokens (column and row cut into the 256 bins
   that actions use). Asked through the prompt that actions use, the language model must
   first fetch the colour from earlier in the prompt and then find that object among the
   image tokens; from scratch it learns neither, since neither pays off alone (measured,
   8-pixel patches: after 10,000 steps it points at *a* cube to 0.3 pixels but at the named
   one only by chance, 13.8 pixels). So the first half of the steps is a lead-in: the
   question alone is the prompt and ends with the colour, the answer follows that word, and
   the look-up is learned; the second half goes through the action prompt and adds the
   fetch (measured: 1.6 pixels held-out after 4,000 vision steps and 2,000 + 2,000 answer
   steps, against 13.8 without the lead-in).

The result is a local model directory that `train --model DIR` fine-tunes like any other
base model; nothing about actions or this robot's joints is learned here.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from crane_x7_vla.backends.openvla import decode
from crane_x7_vla.backends.openvla.action_tokenizer import N_BINS, ActionTokenizer
from crane_x7_vla.backends.openvla.model import (build_batch, load_vla, materialize_preset, pixel_values, prompt_ids,
                                                 set_image_position)
from crane_x7_vla.backends.openvla.prompt import IMAGE_FIRST
from crane_x7_vla.preprocess import ImageSpec, Normalizer
from crane_x7_vla.sim.pointing import CAMERA, PRETRAIN_FIRST_SEED, Scenes, check_stage_settings, render_scenes
from crane_x7_vla.training.config import PRESET_DEFAULTS


class PointingHead(torch.nn.Module):
    """Read-out used only in this stage: a learned query per question attends over the
    vision tower's patch features (the ones the projector passes on) and regresses where
    the object is. Dropped afterwards; what stays is a tower whose features say where each
    coloured thing is."""

    def __init__(self, questions: list[str], width: int, heads: int) -> None:
        super().__init__()
        self.query = torch.nn.Embedding(len(questions), width)
        self.attend = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.out = torch.nn.Sequential(torch.nn.Linear(width, 128), torch.nn.GELU(), torch.nn.Linear(128, 2))

    def forward(self, features: torch.Tensor, question_ids: torch.Tensor) -> torch.Tensor:
        read, _ = self.attend(self.query(question_ids)[:, None], features, features)
        return self.out(read[:, 0])


def vision_encoder(vla):
    """The preset's vision backbone (both towers), the width of the patch features it hands
    to the projector, and a head count that divides that width."""
    backbone = vla.model.vision_backbone
    heads = backbone.featurizer.blocks[0].attn.heads
    return backbone, backbone.embed_dim, heads if backbone.embed_dim % heads == 0 else 1


def pretrain_tiny(dest, *, preset: str = "tiny", image_size=(64, 64), task: str = "reach", scenes: int = 3000,
                  steps: int = 1500, answer_steps: int = 0, batch_size: int = 32, learning_rate: float = 3e-4,
                  answer_learning_rate: float = 1e-3, seed: int = 0, held_out: int = 200, log=print) -> dict:
    """Build `preset`, pretrain its vision tower (`steps`) and then, with `answer_steps`, the
    language model to answer pointing questions, on rendered scenes of `task`; save the model
    to `dest`. Returns figures (held-out pointing errors in pixels of the model's picture,
    time taken), also written to dest/pretraining.json."""
    check_stage_settings(task, scenes=(scenes, 1), steps=(steps, 1), answer_steps=(answer_steps, 0),
                         batch_size=(batch_size, 1), held_out=(held_out, 1))
    dest = Path(dest)
    t0 = time.monotonic()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    materialize_preset(preset, dest, image_size=image_size, seed=seed)
    vla = load_vla(str(dest), image_size=image_size, dtype=torch.float32, device=torch.device("cpu"))
    # the answers are asked the way fine-tuning will prompt this preset
    set_image_position(vla, PRESET_DEFAULTS.get(("openvla", preset), {}).get("image_position", IMAGE_FIRST))
    first = PRETRAIN_FIRST_SEED + seed * 1_000_000
    data = render_scenes(task, scenes, first, ImageSpec(image_size[0], image_size[1], 1.0, 0.1), rng)
    test = render_scenes(task, held_out, first + scenes, ImageSpec(image_size[0], image_size[1], 1.0, 0.0), rng)
    log(f"rendered {scenes} + {held_out} held-out scenes of '{task}' ({len(data.text)} questions) "
        f"in {time.monotonic() - t0:.0f} s")
    figures = {"backend": "openvla", "preset": preset, "task": task, "scenes": scenes, "questions": len(data.text),
               "steps": steps,
               "held_out_questions": len(test.text), "image_size": list(image_size),
               "image_position": vla.image_position}
    error = tower_stage(vla, data, test, steps=steps, batch_size=batch_size, learning_rate=learning_rate, rng=rng)
    figures["held_out_error_pixels"] = round(error, 3)
    log(f"vision tower: held-out pointing error {error:.2f} pixels of the {image_size[0]}x{image_size[1]} picture "
        f"({len(test.text)} questions)")
    figures["answer_steps"] = answer_steps
    if answer_steps:
        # With the picture first, asked only through the action prompt the tiny language
        # model never learns which object the colour names (it must fetch the colour from
        # earlier in the prompt and then look it up among the image tokens, and neither step
        # pays off alone): the first half leads in with the colour as the prompt's last word.
        # With the picture after the instruction the action prompt alone is enough
        # (backends/openvla/prompt.py).
        lead = answer_steps // 2 if vla.image_position == IMAGE_FIRST else 0
        if lead:
            err = answer_stage(vla, data, test, steps=lead, batch_size=batch_size,
                               learning_rate=answer_learning_rate, rng=rng, lead_in=True)
            figures["held_out_lead_in_error_pixels"] = round(err, 3)
            log(f"answers, colour as the last word: held-out error {err:.2f} pixels")
        answer = answer_stage(vla, data, test, steps=answer_steps - lead, batch_size=batch_size,
                              learning_rate=answer_learning_rate, rng=rng)
        figures["held_out_answer_error_pixels"] = round(answer, 3)
        log(f"answers through the action prompt: held-out error {answer:.2f} pixels")
    vla.model.save_pretrained(dest)
    figures["seconds"] = round(time.monotonic() - t0, 1)
    # the marker that training reads (training/config.py: preset_of): built from `preset`
    (dest / "pretraining.json").write_text(json.dumps(figures, indent=2))
    log(f"base model saved in {dest}")
    return figures


def tower_stage(vla, data: Scenes, test: Scenes, *, steps: int, batch_size: int, learning_rate: float,
                rng: np.random.Generator) -> float:
    """The vision tower with a pointing read-out regresses where each named object is;
    returns the held-out error in pixels."""
    from tqdm import tqdm

    tower, width, heads = vision_encoder(vla)
    names = sorted(set(data.text) | set(test.text))
    head = PointingHead(names, width, heads)

    def batch(part: Scenes, rows: np.ndarray):
        pix = pixel_values(vla, {CAMERA: part.images[part.scene[rows]]}, [CAMERA], torch.device("cpu"))
        ids = torch.tensor([names.index(part.text[i]) for i in rows])
        return pix, ids, torch.from_numpy(part.where[rows])

    params = list(tower.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    sched = _cosine(opt, steps)
    tower.train()
    bar = tqdm(range(steps), desc="pretrain vision", unit="step", mininterval=2.0)
    for _ in bar:
        pix, ids, where = batch(data, rng.integers(len(data.text), size=batch_size))
        loss = torch.nn.functional.mse_loss(head(tower(pix), ids), where)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return pointing_error(tower, head, batch, test, vla.image_size)


@torch.no_grad()
def pointing_error(tower, head, batch, part: Scenes, image_size, chunk: int = 128) -> float:
    """Mean distance (pixels of the model's picture) between pointed and true object centres."""
    tower.eval()
    scale = torch.tensor(image_size, dtype=torch.float32) / 2.0
    errors = []
    for i in range(0, len(part.text), chunk):
        pix, ids, where = batch(part, np.arange(i, min(i + chunk, len(part.text))))
        errors.append(((head(tower(pix), ids) - where) * scale).norm(dim=1))
    tower.train()
    return float(torch.cat(errors).mean())


def _cosine(opt, steps: int):
    warmup = max(1, steps // 10)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))


def _location_tokenizer(vocab_size: int) -> ActionTokenizer:
    """Picture positions are already in [-1, 1]: the action tokenizer with identity bounds."""
    return ActionTokenizer(vocab_size, Normalizer(np.full(2, -1.0), np.full(2, 1.0)))


def location_ids(uv: np.ndarray, vocab_size: int) -> np.ndarray:
    """(..., 2) positions in [-1, 1] -> ids of the 256 action-bin tokens."""
    return _location_tokenizer(vocab_size).encode(uv)


def location_of(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Inverse of location_ids: token ids -> bin centres in [-1, 1]."""
    return torch.from_numpy(_location_tokenizer(vocab_size).decode(ids.cpu().numpy())).float()


def answer_stage(vla, data: Scenes, test: Scenes, *, steps: int, batch_size: int, learning_rate: float,
                 rng: np.random.Generator, lead_in: bool = False, label_sigma: float = 2.0) -> float:
    """The language model and projector answer "point to the ..." with two location tokens
    (the vision tower, trained by tower_stage, stays as it is); returns the held-out error in
    pixels. `lead_in`: the question is the whole prompt and ends with the colour (the answer
    directly follows the word to look up); otherwise it goes through the prompt that actions
    use, where the colour lies several tokens before the answer."""
    from tqdm import tqdm

    cpu = torch.device("cpu")

    def batch(part: Scenes, rows: np.ndarray):
        answer = location_ids(part.where[rows], vla.vocab_size)
        pix = pixel_values(vla, {CAMERA: part.images[part.scene[rows]]}, [CAMERA], cpu)
        texts = part.questions(lead_in)
        return build_batch(vla, [texts[i] for i in rows], answer, cpu, bare=lead_in), pix

    model = vla.model
    tower = model.vision_backbone
    tower.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    sched = _cosine(opt, steps)
    first = vla.vocab_size - N_BINS
    desc = "pretrain answers (colour last)" if lead_in else "pretrain answers (action prompt)"
    bar = tqdm(range(steps), desc=desc, unit="step", mininterval=2.0)
    for _ in bar:
        inputs, pix = batch(data, rng.integers(len(data.text), size=batch_size))
        loss, *_ = decode.action_loss(decode.forward(model, vla, inputs, pix).logits, inputs, first, label_sigma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    tower.requires_grad_(True)
    model.eval()
    scale = torch.tensor(vla.image_size, dtype=torch.float32) / 2.0
    errors = []
    lengths = np.array([len(prompt_ids(vla, t, bare=lead_in)) for t in test.questions(lead_in)])
    with torch.no_grad():
        for n in sorted(set(lengths)):  # one prompt length per pass: no padding
            same = np.nonzero(lengths == n)[0]
            for i in range(0, len(same), 64):
                rows = same[i:i + 64]
                inputs, pix = batch(test, rows)
                prompt = {k: v[:, :-2] for k, v in inputs.items() if k != "labels"}
                got = location_of(decode.generate_action_ids(model, vla, prompt, pix, 2, first), vla.vocab_size)
                errors.append(((got - torch.from_numpy(test.where[rows])) * scale).norm(dim=1))
    model.train()
    return float(torch.cat(errors).mean())
