"""--action-head parallel-l1: the tiny preset trained on CPU with the parallel head, its
checkpoint loaded by load_policy and served by the policy server; the attention pattern of
its one forward pass; its settings' errors."""

import json

import numpy as np
import pytest
import torch

from crane_x7_vla import robot
from crane_x7_vla.backends.openvla.inputs import ModelInputs
from crane_x7_vla.backends.openvla.model import (ACTION_HEAD_FILE, ParallelActionHead, ParallelDecoder, load_vla,
                                                 materialize_preset)
from crane_x7_vla.backends.openvla.action_tokenizer import ActionCodec
from crane_x7_vla.policy.client import RemotePolicy
from crane_x7_vla.policy.loader import load_policy
from crane_x7_vla.policy.server import PolicyServer
from crane_x7_vla.training.cli import main
from crane_x7_vla.training.metrics import read_metrics
from .tiny_cli import TINY_OPENVLA_CPU

HORIZON = 4
RUN = TINY_OPENVLA_CPU + [
    "--action-head", "parallel-l1",
    "--action-horizon", str(HORIZON),
    "--batch-size", "4",
    "--val-ratio", "0.2",
    "--learning-rate", "3e-3",
    "--logging-steps", "1",
    "--eval-samples", "8",
    "--num-workers", "0",
    "--seed", "3",
]


@pytest.fixture(scope="module")
def parallel_run(dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel_run")
    rc = main(RUN + ["--data-root", str(dataset_dir), "--output-dir", str(out), "--max-steps", "12",
                     "--eval-steps", "12", "--save-steps", "6"])
    assert rc == 0
    return out


def obs(value=120):
    return {"images": {"primary": np.full((64, 64, 3), value, np.uint8)}, "state": robot.home_state(),
            "instruction": "reach the green cube"}


def test_the_l1_loss_falls_and_the_checkpoint_records_the_head(parallel_run):
    rows = read_metrics(parallel_run)
    loss = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    assert sorted(loss) == list(range(1, 13))
    assert np.mean([loss[s] for s in (10, 11, 12)]) < np.mean([loss[s] for s in (1, 2, 3)]) - 0.1, loss
    final = {k: v for r in rows if r["step"] == 12 for k, v in r.items()}
    for key in ("val/l1", "val/loss", "val/action_accuracy", "train/l1", "train/action_accuracy"):
        assert np.isfinite(final[key]), key
    ckpt = parallel_run / "checkpoint-final"
    config = json.loads((ckpt / "policy_config.json").read_text())
    assert config["openvla"]["action_head"] == "parallel-l1"
    assert config["openvla"]["parallel_head"]["horizon"] == HORIZON
    assert (ckpt / ACTION_HEAD_FILE).is_file() and (ckpt / "adapter").is_dir()


def test_resume_continues_exactly_and_keeps_the_head(parallel_run, dataset_dir, tmp_path, capsys):
    out = tmp_path / "resumed"
    rc = main(RUN + ["--data-root", str(dataset_dir), "--output-dir", str(out), "--max-steps", "12",
                     "--eval-steps", "12", "--save-steps", "6",
                     "--resume-from-checkpoint", str(parallel_run / "checkpoint-6")])
    assert rc == 0
    loss = lambda d: {r["step"]: r["train/loss"] for r in read_metrics(d) if "train/loss" in r}  # noqa: E731
    straight, resumed = loss(parallel_run), loss(out)
    assert sorted(resumed) == list(range(7, 13))
    np.testing.assert_allclose([resumed[s] for s in range(7, 13)], [straight[s] for s in range(7, 13)], rtol=1e-6)
    with pytest.raises(SystemExit) as exc:  # a parallel-head checkpoint resumed as a token-head run
        main(RUN + ["--data-root", str(dataset_dir), "--output-dir", str(tmp_path / "tok"), "--max-steps", "12",
                         "--action-head", "tokens", "--resume-from-checkpoint", str(parallel_run / "checkpoint-6")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "trained with --action-head parallel-l1" in err and "Traceback" not in err, err


def test_load_policy_predicts_a_chunk_in_one_pass_and_the_server_serves_it(parallel_run):
    policy = load_policy(parallel_run / "checkpoint-final", device="cpu")
    assert policy.metadata["action_head"] == "parallel-l1" and policy.metadata["action_horizon"] == HORIZON
    calls = []
    hook = policy.vla.model.language_model.model.register_forward_hook(
        lambda *a: calls.append(1))
    try:
        chunk = policy.predict(obs())
    finally:
        hook.remove()
    assert len(calls) == 1  # one pass of the language model for the whole chunk
    assert chunk.shape == (HORIZON, robot.ACTION_DIM) and np.all(np.isfinite(chunk))
    assert np.all(chunk >= robot.LOWER_LIMITS - 1e-9) and np.all(chunk <= robot.UPPER_LIMITS + 1e-9)
    again = policy.predict(obs())
    np.testing.assert_array_equal(chunk, again)  # deterministic: no sampling
    assert not np.allclose(policy.predict(obs(10)), chunk)  # the picture matters
    srv = PolicyServer(policy, port=0).start()
    try:
        remote = RemotePolicy(srv.url)
        try:
            served = remote.predict(obs())
            assert served.shape == chunk.shape
            np.testing.assert_allclose(served, chunk, atol=5e-3)  # the state travels as float32
        finally:
            remote.close()
    finally:
        srv.stop()


def test_a_damaged_head_file_is_one_error_naming_it(parallel_run, tmp_path):
    import shutil

    from crane_x7_vla.checkpoint_contract import CheckpointError

    copy = tmp_path / "ckpt"
    shutil.copytree(parallel_run / "checkpoint-final", copy)
    (copy / ACTION_HEAD_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=ACTION_HEAD_FILE):
        load_policy(copy, device="cpu")
    (copy / ACTION_HEAD_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_policy(copy, device="cpu")


def test_action_positions_attend_to_each_other_both_ways_and_the_prompt_causally(tmp_path):
    """Changing the last action query changes the first action's output (bidirectional), and
    the prompt is read the same whatever the queries are (the prompt never sees them)."""
    src = materialize_preset("tiny", tmp_path / "tiny", image_size=(64, 64))
    vla = load_vla(str(src), image_size=(64, 64))
    vla.model.eval()
    torch.manual_seed(0)
    head = ParallelActionHead(vla.model.config.text_config.hidden_size, HORIZON)
    decoder = ParallelDecoder(vla.model, head).eval()
    stats = {k: {"q01": [-1.0] * 8, "q99": [1.0] * 8, "mean": [0.0] * 8, "std": [1.0] * 8, "min": [-1.0] * 8,
                 "max": [1.0] * 8} for k in ("action", "proprio")}
    builder = ModelInputs(vla, ActionCodec(vla.vocab_size, stats), ["primary"], "cpu")
    pix = builder.pixels({"primary": np.full((1, 64, 64, 3), 90, np.uint8)})
    batch = builder.parallel(["reach the green cube"], np.zeros((1, 8)), head.n_positions)
    n = head.n_positions
    seen = {}
    hook = vla.model.language_model.model.register_forward_hook(
        lambda m, a, kw, out: seen.__setitem__("h", out.last_hidden_state.detach().clone()), with_kwargs=True)
    with torch.no_grad():
        decoder(batch["input_ids"], batch["attention_mask"], batch["action_mask"], pix)
        before = seen["h"]
        head.queries[-1].add_(torch.randn(head.hidden_size))
        decoder(batch["input_ids"], batch["attention_mask"], batch["action_mask"], pix)
        after = seen["h"]
    hook.remove()
    prompt, actions = before[:, :-n], slice(before.shape[1] - n, None)
    torch.testing.assert_close(after[:, :-n], prompt)
    assert not torch.allclose(after[:, actions][:, 0], before[:, actions][:, 0])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--goal-tokens"], "--no-goal-tokens"),
        (["--attn-implementation", "flash_attention_2"], "sdpa or eager"),
        (["--action-head", "beams"], "--action-head"),
    ],
)
def test_settings_the_parallel_head_cannot_take_are_one_line_errors(extra, message, dataset_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(RUN + extra + ["--data-root", str(dataset_dir), "--output-dir", str(tmp_path / "o"), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err, err
