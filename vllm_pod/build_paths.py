"""Where the optional CuTe headers are (FlashInfer, a vLLM dependency, ships CUTLASS/CuTe), found
without importing the package. Used by setup.py and the layout test."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def cute_include_dir() -> str | None:
    """POD_CUTE_INCLUDE if set (a CUTLASS include directory), else FlashInfer's copy, else None."""
    if os.environ.get("POD_CUTE_INCLUDE"):
        return os.environ["POD_CUTE_INCLUDE"]
    spec = importlib.util.find_spec("flashinfer")
    for root in (spec.submodule_search_locations or []) if spec else []:
        inc = Path(root) / "data" / "cutlass" / "include"
        if (inc / "cute" / "tensor.hpp").exists():
            return str(inc)
    return None
