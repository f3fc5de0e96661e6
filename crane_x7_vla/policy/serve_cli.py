"""`crane-x7-vla serve CHECKPOINT`: serve a checkpoint over openpi's websocket policy protocol."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint directory holding policy_config.json (e.g. .../checkpoint-final)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for the network)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000, openpi's)")
    parser.add_argument("--token", default=os.environ.get("CRANE_X7_VLA_TOKEN"),
                        help="shared token clients must send (Authorization: Api-Key <token>); "
                             "default: $CRANE_X7_VLA_TOKEN, none when unset")
    parser.add_argument("--device", default=None, help="device for the model (e.g. cpu, cuda:0)")
    parser.add_argument("--max-message-mb", type=float, default=16.0, help="largest observation accepted (MB)")
    parser.add_argument("--expected-statistics", default=None, metavar="PATH",
                        help="dataset directory or dataset_statistics.json the checkpoint must have been trained with")


def run(args) -> int:
    from crane_x7_vla.policy.loader import PolicyLoadError, fingerprint_of, load_policy, warm_up
    from crane_x7_vla.policy.server import PolicyServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not 0 <= args.port <= 65535:
        print(f"error: --port must be 0..65535 (got {args.port})", file=sys.stderr)
        return 2
    try:
        expected = fingerprint_of(args.expected_statistics) if args.expected_statistics else None
        policy = load_policy(args.checkpoint, args.device, expected_fingerprint=expected)
    except PolicyLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        logging.info("warm-up prediction: %.2f s", warm_up(policy))
    except Exception as exc:  # noqa: BLE001 - the clients' own requests get their own errors
        logging.warning("the warm-up prediction failed (%s); serving anyway", exc)
    server = PolicyServer(policy, host=args.host, port=args.port, token=args.token,
                          max_message_bytes=int(args.max_message_mb * 1024 * 1024))
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.token:
        logging.warning("serving on %s without a token: anyone on the network can query the policy", args.host)
    logging.info("serving %s (%s) on ws://%s:%d%s", args.checkpoint, policy.config.get("backend"),
                 args.host, args.port, " (token required)" if args.token else "")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="serve a checkpoint to remote clients (openpi websocket protocol)",
                                   description=__doc__)
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="crane-x7-vla serve", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
