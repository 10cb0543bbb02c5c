"""Models that ship with edgegen, addressed as `zoo:NAME` wherever a model path is accepted.

Each `NAME.onnx` here has a model card `NAME.md` beside it, and was trained by a script in tools/.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError

PREFIX = "zoo:"
ZOO_DIR = Path(__file__).parent


def names() -> list[str]:
    """Names of the shipped models."""
    return sorted(p.stem for p in ZOO_DIR.glob("*.onnx"))


def card(name: str) -> str:
    """The first line of a model's card after its title (a one-line description)."""
    path = ZOO_DIR / f"{name}.md"
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")] \
        if path.is_file() else []
    return lines[0] if lines else ""


def resolve(model: str | Path) -> Path:
    """A model path, with `zoo:NAME` replaced by the shipped file."""
    text = str(model)
    if not text.startswith(PREFIX):
        return Path(model)
    name = text[len(PREFIX):]
    path = ZOO_DIR / f"{name}.onnx"
    if not path.is_file():
        raise ModelError(f"{text}: no such zoo model. Available: {', '.join(names()) or 'none'} (`edgegen zoo`).")
    return path
