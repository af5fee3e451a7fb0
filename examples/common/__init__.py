"""What the example trainers share: data, views, configs, evaluation, checkpoints, run folders, DDP.

The scripts run as ``python examples/<script>.py``, which puts ``examples/`` on ``sys.path``; they import
each piece from its module (``from common.data import load_cifar10``).
"""
