"""The `crane-x7-vla` command: one module per command (main dispatches to the others).

    main      the top-level parser, dispatch, one-line errors (`crane-x7-vla`, `python -m crane_x7_vla.cli`)
    args      argument types and the parser class every command shares
    demo      crane-x7-vla demo
    collect   crane-x7-vla collect, logger-keys
    dataset   crane-x7-vla dataset ...
    pretrain  crane-x7-vla pretrain
    train     crane-x7-vla train, merge-lora (also `python -m crane_x7_vla.training.cli`)
    serve     crane-x7-vla serve
    eval      crane-x7-vla eval

A command module is imported only when the parser is built; the libraries a command needs
are imported only when it runs.
"""

from crane_x7_vla.cli.main import build_parser, main, run_command

__all__ = ["build_parser", "main", "run_command"]
