"""`cellzoo segment` (placeholder until its issue lands)."""


def add_arguments(parser):
    pass


def run(args):
    raise RuntimeError("`cellzoo segment` is not implemented yet")
