"""`cellzoo zoo` (placeholder until its issue lands)."""


def add_arguments(parser):
    pass


def run(args):
    raise RuntimeError("`cellzoo zoo` is not implemented yet")
