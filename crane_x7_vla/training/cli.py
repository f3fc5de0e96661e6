"""`python -m crane_x7_vla.training.cli train --backend {openvla,openpi} [flags]` (and `merge-lora`):
the training commands of crane_x7_vla.cli.train, under the module name the guides and the
training images use (also `torchrun --nproc_per_node=N -m crane_x7_vla.training.cli train ...`)."""

import sys

from crane_x7_vla.cli.train import build_parser, config_from_args, main

__all__ = ["build_parser", "config_from_args", "main"]

if __name__ == "__main__":
    sys.exit(main())
