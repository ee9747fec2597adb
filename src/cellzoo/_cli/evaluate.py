"""`cellzoo evaluate` (placeholder until its issue lands)."""


def add_arguments(parser):
    pass


def run(args):
    raise RuntimeError("`cellzoo evaluate` is not implemented yet")
