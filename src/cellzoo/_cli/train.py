"""`cellzoo train` (placeholder until its issue lands)."""


def add_arguments(parser):
    pass


def run(args):
    raise RuntimeError("`cellzoo train` is not implemented yet")
