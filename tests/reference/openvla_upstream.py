"""OpenVLA's own code against ours, token for token, on tiny checkpoints in the published layout.

Needs two things from outside this project's environment:
  OPENVLA_SRC     a folder holding OpenVLA's model code: `configuration_prismatic.py`,
                  `modeling_prismatic.py`, `processing_prismatic.py` (openvla/openvla's
                  `prismatic/extern/hf/`, which the published checkpoint carries as remote code);
  OPENVLA_PYTHON  the python of an environment where that code runs (OpenVLA pins
                  transformers 4.40.1, tokenizers 0.19.1, timm 0.9.10; it needs torch, torchvision,
                  numpy and pillow beside them).

What it does (`python -m tests.reference.openvla_upstream --work DIR`, in this project's venv):
  1. writes a tiny checkpoint in the published `openvla/openvla-7b` layout with this project's
     test layout (tests/training/openvla_layout.py: the real DINOv2-reg4 and SigLIP tower
     definitions at tiny widths, a 2-layer Llama) with a Llama-sized tokenizer (32,000 pieces,
     `▁` at id 29871, which predict_action appends by number) and `norm_stats["crane_x7"]`, and
     tokenizer.json's merges in the published "a b" form; copies OpenVLA's three files into
     it, as the published config.json's auto_map names them;
  2. runs OpenVLA's code on it in a subprocess under OPENVLA_PYTHON: `AutoProcessor` and
     `AutoModelForVision2Seq.from_pretrained(DIR, trust_remote_code=True)` (float32, CPU, every
     weight found under its name), the prompt of OpenVLA's deploy.py, `processor(prompt, image)`
     and `predict_action(unnorm_key="crane_x7", do_sample=False)` on a few pictures and
     instructions; the generated ids are read from the model's own `generate`;
  3. serves the same folder with this project's policy (`load_policy`, as `crane-x7-vla serve DIR`
     loads a published folder) and compares: the same prompt ids, the same 8 action tokens
     (the last 8 ids of prompt and written tokens, as predict_action reads them when
     `generate` stops early at `</s>`), the same actions, and, on the sequence OpenVLA's code
     wrote, the same pixel values and logits;
  4. fine-tunes that base with LoRA for a few steps with `train --backend openvla --model DIR`
     on generated episodes, exports it with `merge-lora ... --output EXPORT` and does 2-3 on the
     export.

OpenVLA's code builds its towers with `timm.create_model(timm_model_ids[i], ...)`, which gives
the published sizes; the subprocess passes the checkpoint's `vision_tower_overrides` (widths,
depth and heads of the tiny towers) to those two calls as timm's own keyword arguments, and
changes nothing else. Writes `report.json` in the work folder; exit status 0 when every case
agrees.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ENV_SRC, ENV_PYTHON = "OPENVLA_SRC", "OPENVLA_PYTHON"
CODE_FILES = ("configuration_prismatic.py", "modeling_prismatic.py", "processing_prismatic.py")
UNNORM_KEY = "crane_x7"
LLAMA_VOCAB, LLAMA_SPACE_ID = 32000, 29871  # Llama-2's vocabulary and the id of its "▁" piece
ACTION_ATOL, PIXEL_ATOL, LOGIT_ATOL = 1e-9, 1e-6, 1e-4  # float32 on two installations of torch
EMBED_SCALE, ACTION_ROW_SCALE, EOS_ROW_SCALE = 16.0, 3.0, 8.0
EOS_ID = 2  # `</s>`
INSTRUCTIONS = [
    "reach the green cube",
    "Pick up the Red Cube and put it on the plate",
    "PUSH THE YELLOW BUTTON",
    "open the drawer, then close the gripper",
]


# ---- OpenVLA's side (runs under OPENVLA_PYTHON: standard library, torch, transformers, timm) ----


def upstream_predict(model_dir: str, cases_file: str, out_file: str) -> None:
    """OpenVLA's processor and predict_action on every case of `cases_file`; writes the
    prompt ids, the generated action ids and the actions to `out_file`."""
    import numpy as np
    import timm
    import tokenizers
    import torch
    import transformers
    from PIL import Image
    from transformers import AutoModelForVision2Seq, AutoProcessor

    config = json.loads((Path(model_dir) / "config.json").read_text())
    sizes = dict(zip(config["timm_model_ids"], config.get("vision_tower_overrides") or []))
    create_model = timm.create_model

    def tiny_create_model(name, *args, **kwargs):
        return create_model(name, *args, **{**kwargs, **sizes.get(name, {})})

    timm.create_model = tiny_create_model
    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    vla, info = AutoModelForVision2Seq.from_pretrained(
        model_dir, trust_remote_code=True, torch_dtype=torch.float32, output_loading_info=True
    )
    bad = {k: sorted(v) for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"OpenVLA's code did not load every weight of {model_dir}: {bad}")
    vla.eval()
    generated = []
    generate = vla.generate

    def recording_generate(*args, **kwargs):
        out = generate(*args, **kwargs)
        generated.append(out)
        return out

    vla.generate = recording_generate
    results = []
    space = 29871  # the id predict_action appends to the prompt
    for i, case in enumerate(json.loads(Path(cases_file).read_text())):
        image = Image.open(case["image"]).convert("RGB")
        prompt = f"In: What action should the robot take to {case['instruction'].lower()}?\nOut:"  # deploy.py
        inputs = processor(prompt, image).to("cpu", dtype=torch.float32)
        with torch.no_grad():
            action = vla.predict_action(**inputs, unnorm_key=UNNORM_KEY, do_sample=False)
        dim = vla.get_action_dim(UNNORM_KEY)
        prompt_ids = inputs["input_ids"][0].tolist()
        prompt_ids += [] if prompt_ids[-1] == space else [space]
        sequence = generated[-1]
        with torch.no_grad():  # the logits of every step, from one pass over the whole sequence
            logits = vla(
                input_ids=sequence, attention_mask=torch.ones_like(sequence), pixel_values=inputs["pixel_values"]
            ).logits[0, -(sequence.shape[1] - len(prompt_ids) + 1) :]
        np.save(Path(out_file).parent / f"{Path(out_file).stem}_logits_{i}.npy", logits.numpy())
        np.save(Path(out_file).parent / f"{Path(out_file).stem}_pixels_{i}.npy", inputs["pixel_values"][0].numpy())
        results.append(
            {
                "prompt_ids": prompt_ids,
                "written": sequence[0, len(prompt_ids) :].tolist(),
                "tokens": sequence[0, -dim:].tolist(),
                "action": np.asarray(action).tolist(),
            }
        )
    Path(out_file).write_text(
        json.dumps(
            {
                "versions": {
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "tokenizers": tokenizers.__version__,
                    "timm": timm.__version__,
                    "numpy": np.__version__,
                    "python": sys.version.split()[0],
                },
                "model_class": f"{type(vla).__module__}.{type(vla).__name__}",
                "processor_class": f"{type(processor).__module__}.{type(processor).__name__}",
                "cases": results,
            },
            indent=1,
        )
    )


# ---- our side (this project's venv) --------------------------------------------------------


def crane_x7_stats() -> dict:
    """norm_stats["crane_x7"] of a base model: 8 dimensions inside the joint limits, the gripper
    left out of the normalisation, as an export of ours writes it."""
    import numpy as np

    from crane_x7_vla import robot

    lo = np.concatenate([robot.LOWER_LIMITS[:7] * 0.6, [0.0]])
    hi = np.concatenate([robot.UPPER_LIMITS[:7] * 0.6, [1.0]])
    return {
        UNNORM_KEY: {
            "action": {"q01": lo.tolist(), "q99": hi.tolist(), "mask": [True] * 7 + [False]},
            "proprio": {"q01": lo.tolist(), "q99": hi.tolist()},
        }
    }


def write_base(dest: Path, *, seed: int = 5) -> Path:
    """The tests' tiny published-layout checkpoint with a Llama-sized vocabulary: 32,000 pieces
    (`▁` moved to id 29871, where Llama-2 has it), `<PAD>` at 32000, 32,064 embedding rows."""
    from safetensors.torch import save_file

    from tests.training import openvla_layout as layout

    layout.write_checkpoint(dest, seed=seed, stats={**layout.norm_stats(), **crane_x7_stats()})
    layout.write_tokenizer(dest, vocab=LLAMA_VOCAB)
    spec = json.loads((dest / "tokenizer.json").read_text())
    pieces = spec["model"]["vocab"]
    space = pieces["\u2581"]
    other = next(p for p, i in pieces.items() if i == LLAMA_SPACE_ID)
    pieces["\u2581"], pieces[other] = LLAMA_SPACE_ID, space
    # merges as "a b" strings, as the published tokenizer.json stores them (tokenizers 0.19,
    # which OpenVLA pins, reads only that form)
    spec["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    (dest / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False, indent=1))
    config = json.loads((dest / "config.json").read_text())
    rows = LLAMA_VOCAB + config["pad_to_multiple_of"]
    config.update(pad_token_id=LLAMA_VOCAB)
    config["text_config"].update(vocab_size=rows, pad_token_id=LLAMA_VOCAB)
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    weights = layout.random_weights(layout.published_parameters(vocab=LLAMA_VOCAB), seed)
    # a random tiny model repeats one token that is rarely an action token; with larger token
    # embeddings and action rows of the output layer, greedy decoding writes varied action
    # tokens, and with a larger `</s>` row it ends early on some pictures, as an undertrained
    # model may
    weights["language_model.model.embed_tokens.weight"] *= EMBED_SCALE
    weights["language_model.lm_head.weight"][LLAMA_VOCAB - 256 : LLAMA_VOCAB] *= ACTION_ROW_SCALE
    weights["language_model.lm_head.weight"][EOS_ID] *= EOS_ROW_SCALE
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def install_remote_code(model_dir: Path, src: Path) -> None:
    """OpenVLA's three files beside the checkpoint, where its config.json's auto_map points."""
    config = json.loads((model_dir / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_prismatic.OpenVLAConfig",
        "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction",
    }
    for name in CODE_FILES:
        shutil.copyfile(src / name, model_dir / name)


def write_cases(dest: Path, episodes: Path | None = None) -> Path:
    """Pictures (PNG, so both sides read the same pixels) and instructions: random noise and
    smooth gradients of several sizes, and, from `episodes`, frames of recorded episodes."""
    import numpy as np
    from PIL import Image

    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    pictures = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((224, 224, 3), (480, 640, 3), (96, 128, 3))]
    yy, xx = np.mgrid[0:300, 0:400]
    pictures.append(np.stack([xx * 255 // 399, yy * 255 // 299, (xx + yy) % 256], -1).astype(np.uint8))
    pictures.append(np.stack([255 - xx * 255 // 399, (xx * yy) % 256, yy * 255 // 299], -1).astype(np.uint8))
    if episodes is not None:
        from crane_x7_vla.episode import jpeg
        from crane_x7_vla.episode.reader import list_episodes, load_episode

        for info in list_episodes(episodes)[:3]:
            pictures.append(jpeg.decode(load_episode(info.path).images["primary"][10]))
    cases = []
    for i, picture in enumerate(pictures):
        path = dest / f"picture_{i}.png"
        Image.fromarray(picture).save(path)
        cases.append({"image": str(path), "instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)]})
    (dest / "cases.json").write_text(json.dumps(cases, indent=1))
    return dest / "cases.json"


def run_upstream(model_dir: Path, cases_file: Path, out_file: Path, python: str, timeout: float = 900) -> dict:
    """`upstream_predict` under OpenVLA's environment, with HF and timm kept off the network."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONNOUSERSITE": "1",
        "HF_MODULES_CACHE": str(out_file.parent / "hf_modules"),
    }
    env.pop("PYTHONPATH", None)
    cmd = [python, str(Path(__file__).resolve()), "upstream", str(model_dir), str(cases_file), str(out_file)]
    proc = subprocess.run(
        cmd, check=False, env=env, cwd=str(out_file.parent), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"OpenVLA's code failed on {model_dir} (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out_file.read_text())


def run_ours(model_dir: Path, cases_file: Path, upstream_file: Path) -> list[dict]:
    """The folder served as it is by our policy: tokens, the actions before the joint-limit
    clamp (the codec's decoding, as predict_action's) and the served action; and, on the
    sequences OpenVLA's code wrote (`upstream_file`), the largest differences from its pixel
    values and its logits."""
    import numpy as np
    import torch
    from PIL import Image

    from crane_x7_vla.backends.openvla.model import pixel_values, prompt_ids
    from crane_x7_vla.backends.openvla.prismatic import openvla_image
    from crane_x7_vla.policy.loader import load_policy

    policy = load_policy(model_dir, "cpu")
    assert policy.published and policy.config["openvla"]["unnorm_key"] == UNNORM_KEY
    upstream = json.loads(upstream_file.read_text())["cases"]
    out = []
    for i, case in enumerate(json.loads(cases_file.read_text())):
        image = np.asarray(Image.open(case["image"]).convert("RGB"))
        served = policy.predict({"images": {"primary": image}, "instruction": case["instruction"]})
        tokens = policy.last_ids
        raw = policy.codec.decode(tokens[None], np.zeros((1, 8)), clip=True)[0, 0]
        pixels = pixel_values(
            policy.vla, {"primary": openvla_image(image, policy.vla.processing)[None]}, ["primary"], "cpu"
        )
        theirs = np.load(upstream_file.parent / f"{upstream_file.stem}_pixels_{i}.npy")
        sequence = torch.tensor([upstream[i]["prompt_ids"] + upstream[i]["written"]])
        with torch.no_grad():
            logits = policy.vla.model(
                input_ids=sequence, attention_mask=torch.ones_like(sequence), pixel_values=pixels
            ).logits[0, -(len(upstream[i]["written"]) + 1) :]
        their_logits = np.load(upstream_file.parent / f"{upstream_file.stem}_logits_{i}.npy")
        out.append(
            {
                "prompt_ids": [int(t) for t in prompt_ids(policy.vla, case["instruction"])],
                "tokens": [int(t) for t in tokens],
                "action": raw.tolist(),
                "served": served[0].tolist(),
                "pixel_diff": float(np.max(np.abs(pixels[0].numpy() - theirs))),
                "logit_diff": float(np.max(np.abs(logits.numpy() - their_logits))),
                "logit_scale": float(np.max(np.abs(their_logits))),
            }
        )
    return out


def compare(upstream: list[dict], ours: list[dict]) -> dict:
    """Figures: cases whose 8 tokens are equal, token positions equal, prompts equal, the
    largest action difference (before and after our joint-limit clamp)."""
    import numpy as np

    from crane_x7_vla import robot

    same_tokens = sum(u["tokens"] == o["tokens"] for u, o in zip(upstream, ours))
    positions = sum(int(a == b) for u, o in zip(upstream, ours) for a, b in zip(u["tokens"], o["tokens"]))
    prompts = sum(u["prompt_ids"] == o["prompt_ids"] for u, o in zip(upstream, ours))
    raw = max(float(np.max(np.abs(np.subtract(u["action"], o["action"])))) for u, o in zip(upstream, ours))
    served = max(
        float(np.max(np.abs(robot.clamp_to_limits(np.asarray(u["action"])) - np.asarray(o["served"]))))
        for u, o in zip(upstream, ours)
    )
    action_tokens = sum(LLAMA_VOCAB - 256 <= t < LLAMA_VOCAB for o in ours for t in o["tokens"])
    return {
        "max_pixel_diff": max(o["pixel_diff"] for o in ours),
        "max_logit_diff": max(o["logit_diff"] for o in ours),
        "max_abs_logit": max(o["logit_scale"] for o in ours),
        "ended_early": sum(len(u["written"]) < len(u["tokens"]) for u in upstream),
        "distinct_token_ids": len({t for o in ours for t in o["tokens"]}),
        "cases": len(ours),
        "tokens_equal": same_tokens,
        "token_positions_equal": positions,
        "token_positions": sum(len(o["tokens"]) for o in ours),
        "prompts_equal": prompts,
        "max_action_diff": raw,
        "max_served_action_diff": served,
        "tokens_in_action_range": action_tokens,
        "agree": same_tokens == len(ours)
        and prompts == len(ours)
        and raw <= ACTION_ATOL
        and served <= ACTION_ATOL
        and max(o["pixel_diff"] for o in ours) <= PIXEL_ATOL
        and max(o["logit_diff"] for o in ours) <= LOGIT_ATOL,
    }


def fine_tune_and_export(base: Path, episodes: Path, work: Path) -> tuple[Path, Path]:
    """LoRA fine-tuning of `base` for a few steps with our trainer, then `merge-lora` (the
    documented commands, in-process); returns (checkpoint-final, export)."""
    from crane_x7_vla.training.cli import main

    run = work / "lora_run"
    rc = main(
        [
            "train",
            "--backend",
            "openvla",
            "--model",
            str(base),
            "--image-size",
            "224x224",
            "--device",
            "cpu",
            "--batch-size",
            "4",
            "--val-ratio",
            "0.2",
            "--learning-rate",
            "5e-3",
            "--logging-steps",
            "1",
            "--eval-samples",
            "4",
            "--num-workers",
            "1",
            "--seed",
            "3",
            "--lora-rank",
            "4",
            "--lora-alpha",
            "8",
            "--max-steps",
            "6",
            "--save-steps",
            "100",
            "--crop-scale",
            "1.0",
            "--no-normalize-gripper",
            "--data-root",
            str(episodes),
            "--output-dir",
            str(run),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"train exited {rc}")
    export = work / "export"
    if export.exists():
        shutil.rmtree(export)
    rc = main(["merge-lora", str(run / "checkpoint-final"), "--output", str(export)])
    if rc != 0:
        raise RuntimeError(f"merge-lora exited {rc}")
    return run / "checkpoint-final", export


def check(work: Path, src: Path, python: str) -> dict:
    """Steps 1-4 of the module docstring in `work`; returns the report."""
    from tests.training.conftest import write_episodes

    work.mkdir(parents=True, exist_ok=True)
    missing = [n for n in CODE_FILES if not (src / n).is_file()]
    if missing:
        raise SystemExit(f"{ENV_SRC}={src}: missing {', '.join(missing)}")
    episodes = work / "episodes"
    if not episodes.exists():
        write_episodes(episodes)
    cases = write_cases(work / "cases", episodes)
    base = work / "base"
    if base.exists():
        shutil.rmtree(base)
    write_base(base)
    install_remote_code(base, src)
    report = {"openvla_src": str(src), "openvla_python": python}
    upstream = run_upstream(base, cases, work / "upstream_base.json", python)
    report.update(
        upstream_versions=upstream["versions"],
        upstream_model_class=upstream["model_class"],
        upstream_processor_class=upstream["processor_class"],
    )
    report["base"] = compare(upstream["cases"], run_ours(base, cases, work / "upstream_base.json"))
    _, export = fine_tune_and_export(base, episodes, work)
    copied = [n for n in CODE_FILES if (export / n).read_bytes() == (src / n).read_bytes()]
    report["export_carries_remote_code"] = copied == list(CODE_FILES)
    upstream = run_upstream(export, cases, work / "upstream_export.json", python)
    report["export"] = compare(upstream["cases"], run_ours(export, cases, work / "upstream_export.json"))
    (work / "report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "upstream":
        upstream_predict(*argv[1:4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the checkpoints, pictures and report")
    parser.add_argument("--openvla-src", type=Path, default=os.environ.get(ENV_SRC))
    parser.add_argument("--openvla-python", default=os.environ.get(ENV_PYTHON))
    args = parser.parse_args(argv)
    if not args.openvla_src or not args.openvla_python:
        parser.error(f"set {ENV_SRC} and {ENV_PYTHON} (or --openvla-src / --openvla-python)")
    report = check(args.work, args.openvla_src, args.openvla_python)
    print(
        json.dumps(
            {k: report[k] for k in ("upstream_versions", "base", "export", "export_carries_remote_code")}, indent=2
        )
    )
    return 0 if report["base"]["agree"] and report["export"]["agree"] and report["export_carries_remote_code"] else 1


if __name__ == "__main__":
    sys.exit(main())
