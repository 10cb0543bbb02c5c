"""On-device SDK: open a bundle and generate images.

    from edgegen.runtime import Generator
    gen = Generator.open("bundles/glyphgen-ort")
    img = gen.generate(seed=3, label=7)          # uint8 HWC numpy array

Imports numpy and the one backend package the bundle needs, nothing else.
"""

from .generator import Generator
from .images import to_pil

__all__ = ["Generator", "to_pil"]
