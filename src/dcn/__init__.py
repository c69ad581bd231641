"""dcn: Deformable ConvNets research framework."""

from dcn import _moved

__version__ = "0.1.0"

_moved.install()  # old module paths keep importing, with a FutureWarning (dcn._moved.MOVED_MODULES)
