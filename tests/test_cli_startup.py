"""`cellzoo --help` and `cellzoo zoo list` must not import torch (seconds of start-up on a laptop)."""
import json
import subprocess
import sys

PROBE = """
import contextlib, io, json, sys
from cellzoo.cli import build_parser, main
build_parser()
after_parser = "torch" in sys.modules
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(["zoo", "list"])
print(json.dumps({"parser": after_parser, "zoo_list": "torch" in sys.modules, "code": code,
                  "listed": "cellzoo-he" in out.getvalue()}))
"""


def test_parser_and_zoo_list_do_not_import_torch():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"parser": False, "zoo_list": False, "code": 0, "listed": True}


def test_torch_free_names_are_the_engine_names():
    from cellzoo.infer.device import DEVICE_CHOICES
    from cellzoo.models import FAMILIES, family_class

    assert DEVICE_CHOICES == ("auto", "cpu", "cuda", "mps")
    assert {name: family_class(name).family for name in FAMILIES} == {name: name for name in FAMILIES}
