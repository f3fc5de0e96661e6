import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


def cli_path() -> str:
    """The installed `crane-x7-vla` console script of the running interpreter."""
    return str(VENV_BIN / "crane-x7-vla")
