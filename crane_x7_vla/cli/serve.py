"""`crane-x7-vla serve CHECKPOINT`: serve a checkpoint over openpi's websocket policy protocol.

The token clients must send comes from --token, --token-file PATH, $CRANE_X7_VLA_TOKEN_FILE
or $CRANE_X7_VLA_TOKEN (the first one set); a file or a variable keeps it out of the
process list."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from crane_x7_vla.policy.devices import ACCEPTED, device_arg
from crane_x7_vla.policy.server import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    DEFAULT_MAX_PROMPT_CHARS,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        help="checkpoint directory holding policy_config.json (e.g. .../checkpoint-final), "
        "a model folder in OpenVLA's published layout or a directory in openpi's "
        "on-disk layout (both served as they are)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for the network)",
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000, openpi's)")
    parser.add_argument(
        "--token",
        default=None,
        help="shared token clients must send (Authorization: Api-Key <token>); other users of this "
        "machine can read it in the process list, so prefer --token-file or $CRANE_X7_VLA_TOKEN",
    )
    parser.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help="read the token from the first line of this file; default: $CRANE_X7_VLA_TOKEN_FILE, "
        "then $CRANE_X7_VLA_TOKEN; no token when none is set",
    )
    parser.add_argument(
        "--device",
        default=None,
        type=device_arg,
        help=f"device for the model: {ACCEPTED} (default: the backend's choice)",
    )
    parser.add_argument(
        "--unnorm-key",
        default=None,
        metavar="KEY",
        help="for a model folder in OpenVLA's published layout (config.json, no policy_config.json): "
        "the norm_stats entry whose statistics turn its action tokens into joint targets "
        "(default: crane_x7, else its only entry)",
    )
    group = parser.add_argument_group(
        "openpi checkpoint directories",
        "for a directory in openpi's on-disk layout (params/, assets/<asset_id>/"
        "norm_stats.json; no policy_config.json), served as it is: what its weights do not tell",
    )
    group.add_argument(
        "--asset-id", default=None, help="the norm stats under assets/ (default: the only one, else crane_x7)"
    )
    group.add_argument(
        "--tokenizer",
        default=None,
        metavar="PATH",
        help="PaliGemma's tokenizer (paligemma_tokenizer.model or a tokenizer.json); default: "
        "tokenizer.model / tokenizer.json in the directory",
    )
    group.add_argument(
        "--image-slots",
        default=None,
        metavar="BASE,LEFT,RIGHT",
        help="a camera for each of openpi's image slots (base, left wrist, right wrist), '-' for none "
        "(default primary,-,-)",
    )
    group.add_argument(
        "--action-dims",
        default=None,
        metavar="DIMS",
        help="positions of the CRANE-X7's 8 joint targets among the model's actions, e.g. 0-7 "
        "(the default) or 0,1,2,3,4,5,6,13",
    )
    group.add_argument(
        "--state-dims", default=None, metavar="DIMS", help="the same for the state (default: --action-dims)"
    )
    group.add_argument(
        "--absolute-actions",
        action="store_true",
        help="the model's actions are absolute joint targets (default: arm joints as deltas from the "
        "state, gripper absolute)",
    )
    group.add_argument("--action-horizon", type=int, default=None, help="steps per chunk (default 50, openpi's π0)")
    group.add_argument("--max-token-len", type=int, default=None, help="prompt tokens (default 48, openpi's π0)")
    group.add_argument("--control-rate-hz", type=float, default=None, help="steps per second of a chunk (default 10)")
    parser.add_argument("--max-message-mb", type=float, default=16.0, help="largest observation accepted (MB)")
    parser.add_argument(
        "--max-prompt-chars",
        type=int,
        default=DEFAULT_MAX_PROMPT_CHARS,
        help="longest instruction accepted, in characters; longer prompts get an error reply "
        f"instead of holding the model (default {DEFAULT_MAX_PROMPT_CHARS})",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help=f"clients connected at once (default {DEFAULT_MAX_CONNECTIONS}); requests are "
        "answered in arrival order, at most one waiting per connection",
    )
    parser.add_argument(
        "--max-connections-per-address",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        help=f"connections from one IP address (default {DEFAULT_MAX_CONNECTIONS_PER_ADDRESS})",
    )
    parser.add_argument(
        "--expected-statistics",
        default=None,
        metavar="PATH",
        help="dataset directory or dataset_statistics.json the checkpoint must have been trained with",
    )


class TokenError(ValueError):
    """The token cannot be read; the message names the flag, variable or file."""


def resolve_token(token: str | None, token_file: str | None, environ=os.environ) -> str | None:
    """The server's token: --token, else the file named by --token-file or
    $CRANE_X7_VLA_TOKEN_FILE (its first line), else $CRANE_X7_VLA_TOKEN; None when none is set."""
    if token and token_file:
        raise TokenError("give the token with --token or with --token-file, not both")
    if token:
        return token
    source = "--token-file" if token_file else "$CRANE_X7_VLA_TOKEN_FILE"
    path = token_file or environ.get("CRANE_X7_VLA_TOKEN_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.readline().strip()
            mode = os.stat(path).st_mode
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenError(f"cannot read the token file {path} ({source}): {exc}") from None
        if not value:
            raise TokenError(f"the token file {path} ({source}) is empty: write the token on its first line")
        if mode & 0o077:
            logging.warning("the token file %s can be read by other users of this machine (chmod 600 %s)", path, path)
        return value
    return environ.get("CRANE_X7_VLA_TOKEN") or None


def run(args) -> int:
    from crane_x7_vla.checkpoint_contract import CheckpointError, fingerprint_of
    from crane_x7_vla.policy.loader import load_policy, warm_up
    from crane_x7_vla.policy.server import PolicyServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not 0 <= args.port <= 65535:
        print(f"error: --port must be 0..65535 (got {args.port})", file=sys.stderr)
        return 2
    for flag in ("max_prompt_chars", "max_connections", "max_connections_per_address"):
        if getattr(args, flag) < 1:
            print(f"error: --{flag.replace('_', '-')} must be at least 1 (got {getattr(args, flag)})", file=sys.stderr)
            return 2
    from crane_x7_vla.policy.devices import DeviceError, check_device

    try:
        check_device(args.device, parameter="--device")
    except DeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.max_message_mb > 0:
        print(f"error: --max-message-mb must be above 0 (got {args.max_message_mb})", file=sys.stderr)
        return 2
    try:
        token = resolve_token(args.token, args.token_file)
    except TokenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        expected = fingerprint_of(args.expected_statistics) if args.expected_statistics else None
        openpi = {
            k: getattr(args, k, None)
            for k in (
                "asset_id",
                "tokenizer",
                "image_slots",
                "action_dims",
                "state_dims",
                "absolute_actions",
                "action_horizon",
                "max_token_len",
                "control_rate_hz",
            )
        }
        policy = load_policy(
            args.checkpoint, args.device, expected_fingerprint=expected, unnorm_key=args.unnorm_key, openpi=openpi
        )
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        logging.info("warm-up prediction: %.2f s", warm_up(policy))
    except Exception as exc:  # noqa: BLE001 - the clients' own requests get their own errors
        logging.warning("the warm-up prediction failed (%s); serving anyway", exc)
    server = PolicyServer(
        policy,
        host=args.host,
        port=args.port,
        token=token,
        max_message_bytes=max(1, int(args.max_message_mb * 1024 * 1024)),
        max_prompt_chars=args.max_prompt_chars,
        max_connections=args.max_connections,
        max_connections_per_address=args.max_connections_per_address,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        logging.warning("serving on %s without a token: anyone on the network can query the policy", args.host)
    logging.info(
        "serving %s (%s) on ws://%s:%d%s",
        args.checkpoint,
        policy.config.get("backend"),
        args.host,
        args.port,
        " (token required)" if token else "",
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a checkpoint to remote clients (openpi websocket protocol)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="crane-x7-vla serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
