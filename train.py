"""Train and test one model: ``python train.py [overrides]`` (the same as ``dcn-train``; see dcn.train).

A checkout's entry point: the configs are in ``src/dcn/conf``, the code in ``src/dcn/train.py``.
"""

from dcn.train import cli, main, train  # noqa: F401  (main, train: for tests and notebooks)

if __name__ == "__main__":
    cli()
