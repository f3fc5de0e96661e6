"""OpenVLA's own model code, run in an environment with the versions it pins, predicts the
same action tokens and actions as our policy serving the same folder: a tiny checkpoint in
the published layout, and its export after LoRA fine-tuning with our trainer and merge-lora
(see openvla_upstream.py)."""

import os
from pathlib import Path

import pytest

from . import openvla_upstream as upstream

pytestmark = pytest.mark.skipif(
    not (os.environ.get(upstream.ENV_SRC) and os.environ.get(upstream.ENV_PYTHON)),
    reason=f"set {upstream.ENV_SRC} (a folder with OpenVLA's *_prismatic.py) and {upstream.ENV_PYTHON} "
           f"(a python with transformers 4.40.1, tokenizers 0.19.1, timm 0.9.10) to run OpenVLA's own code")


def test_openvla_code_and_our_policy_write_the_same_action_tokens(tmp_path):
    report = upstream.check(tmp_path, Path(os.environ[upstream.ENV_SRC]), os.environ[upstream.ENV_PYTHON])
    assert report["upstream_versions"]["transformers"] == "4.40.1"
    assert report["upstream_model_class"].endswith("modeling_prismatic.OpenVLAForActionPrediction")
    for name in ("base", "export"):
        figures = report[name]
        assert figures["cases"] == 8 and figures["tokens_equal"] == 8, (name, figures)
        assert figures["prompts_equal"] == 8, (name, figures)
        assert figures["max_pixel_diff"] <= upstream.PIXEL_ATOL, (name, figures)
        assert figures["max_logit_diff"] <= upstream.LOGIT_ATOL, (name, figures)
        assert figures["max_action_diff"] <= upstream.ACTION_ATOL, (name, figures)
        assert figures["max_served_action_diff"] <= upstream.ACTION_ATOL, (name, figures)
        assert figures["tokens_in_action_range"] >= 32 and figures["distinct_token_ids"] >= 16, (name, figures)
        assert figures["agree"]
    assert report["base"]["ended_early"] >= 1  # generate stopped at </s> before 8 tokens
    assert report["export_carries_remote_code"]
