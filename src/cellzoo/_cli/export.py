"""`cellzoo export` (placeholder until its issue lands)."""


def add_arguments(parser):
    pass


def run(args):
    raise RuntimeError("`cellzoo export` is not implemented yet")
