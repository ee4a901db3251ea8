import os
from pathlib import Path

import pytest

# Tests read the mirrored public data through WANDAO_DATA_DIR (the Makefile sets it);
# default to the checkout's sibling so a bare `pytest` works too.
os.environ.setdefault("WANDAO_DATA_DIR", str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["WANDAO_DATA_DIR"])
    if not path.exists():
        pytest.skip(f"mirrored data not found at {path} (set WANDAO_DATA_DIR)")
    return path
