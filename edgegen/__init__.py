"""edgegen: compile image generators for edge devices and serve them there.

This module stays import-light: the on-device runtime (`edgegen.runtime`) must
load with numpy and one backend package only.
"""

__version__ = "0.1.0"
