"""Tasks: one sub-package per task, holding its head, losses, metrics and LightningModule side by side.

Every task module takes the backbone (built from ``conf/backbone``) and the number of classes (from the
datamodule) and logs ``train/*``, ``val/*`` and ``test/*`` metrics with names shared across tasks where
the meaning is the same (``loss``, ``acc``, ...).
"""
