"""Names that the CLI parser, the registry and the engine share, kept free of torch.

``cellzoo --help`` and ``cellzoo zoo list`` build their parsers and read the registry from these
without importing torch (seconds of start-up); the engine modules import them from here too, so there
is one source.
"""
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")

#: family name -> "module:Class" (imported only when a model is built)
FAMILIES: dict[str, str] = {
    "repsnet": "cellzoo.models.repsnet:RepSNet",
    "fullnet": "cellzoo.models.fullnet:FullNet",
    "cascade": "cellzoo.models.cascade:CascadeMaskRCNN",
    "scts": "cellzoo.models.scts:SCTS",
}
