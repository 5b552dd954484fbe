"""The a2bs version: its one home (``a2bs.__version__``, the wheel's metadata and model cards read it)."""

VERSION = "0.2.0"
