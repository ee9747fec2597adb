"""Typed RepSNet trained on a mix of typed (CoNSeP) and untyped (MoNuSeg) images: unknown types are ignored."""
import numpy as np
import torch

from cellzoo.data import load_shared_dataset
from cellzoo.models import build_model
from cellzoo.models.repsnet import UNKNOWN_TYPE


def test_untyped_nuclei_do_not_contribute_to_type_losses(shared_data):
    consep = load_shared_dataset("consep", "train", root=shared_data)[0]
    model = build_model("repsnet", {"filters": (8, 16, 32, 64), "num_classes": 5})
    crop = (slice(0, 64), slice(0, 64))
    labels, classes = consep.labels[crop], consep.classes[crop]
    untyped = model.targets(labels, None)
    typed = model.targets(labels, classes)
    assert set(np.unique(untyped["type"])) <= {0, UNKNOWN_TYPE}
    assert (untyped["type"][labels > 0] == UNKNOWN_TYPE).all()
    np.testing.assert_array_equal(untyped["distance"], typed["distance"])

    torch.manual_seed(0)
    image = torch.from_numpy(np.asarray(consep.image[crop], np.float32)).permute(2, 0, 1)[None]
    logits = model(image)
    # Changing the type logits only inside unknown nuclei must leave the type losses unchanged.
    target = {k: torch.from_numpy(v)[None] for k, v in untyped.items()}
    base = model.loss(logits, target)
    changed = dict(logits)
    inside = torch.from_numpy(labels > 0)[None, None]
    changed["type"] = torch.where(inside, logits["type"] + 5.0 * torch.randn_like(logits["type"]), logits["type"])
    moved = model.loss(changed, target)
    for term in ("type_ce", "type_dice", "type_focal"):
        assert torch.isclose(base[term], moved[term], rtol=1e-5), term
    # ... while with known types the same change does move them.
    typed_target = {k: torch.from_numpy(v)[None] for k, v in typed.items()}
    assert not torch.isclose(model.loss(logits, typed_target)["type_ce"], model.loss(changed, typed_target)["type_ce"])
