"""What the example trainers share; ``python examples/<script>.py`` puts ``examples/`` on ``sys.path``."""
