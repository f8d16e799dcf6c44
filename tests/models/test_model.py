"""TransferModel: forward/embed, freezing the first k encoder layer groups, build_model from configs."""

from __future__ import annotations

import pytest
import torch

from support.structures import labelled_batch
from tlgnn.data import TaskSpec
from tlgnn.models import ExpressionError, TransferModel, build_model

TASKS = [TaskSpec("gap_pbe", unit="eV", fidelity="pbe"), TaskSpec("gap_hse", unit="eV", fidelity="hse")]
ENCODERS = {"cgcnn": {"hidden_channels": 16, "num_layers": 3, "out_channels": 24},
            "m3gnet_lite": {"hidden_channels": 16, "num_layers": 2, "out_channels": 24}}


def model(name: str = "cgcnn") -> TransferModel:
    torch.manual_seed(0)
    return build_model({"name": name, **ENCODERS[name]},
                       {"name": "difference", "chain": ["gap_pbe", "gap_hse"], "hidden": [16]}, TASKS)


def test_forward_and_embed():
    m = model().eval()
    batch = labelled_batch(TASKS, n=4)
    preds = m(batch)
    assert set(preds) == {"gap_pbe", "gap_hse"} and preds["gap_hse"].shape == (4,)
    emb = m.embed(batch)
    assert emb.shape == (4, 24)
    assert torch.allclose(m.head(m.encode(batch), batch)["gap_hse"], preds["gap_hse"])
    assert m.config == {"encoder": {"name": "cgcnn", **ENCODERS["cgcnn"]},
                        "head": {"name": "difference", "chain": ["gap_pbe", "gap_hse"], "hidden": [16]}}


@pytest.mark.parametrize("name", sorted(ENCODERS))
@pytest.mark.parametrize("k", [0, 1, 2])
def test_freeze_first_k_groups_exactly(name, k):
    m = model(name)
    groups = m.encoder.layer_groups()
    m.freeze_encoder(k)
    for i, group in enumerate(groups):
        for p in group.parameters():
            assert p.requires_grad == (i >= k), (i, k)
    assert all(p.requires_grad for p in m.head.parameters())
    # frozen groups keep batch-norm in eval mode through train(); the others train
    m.train()
    for i, group in enumerate(groups):
        for bn in (mod for mod in group.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)):
            assert bn.training == (i >= k)
    # a training step changes neither the weights nor the running statistics of frozen groups
    before = [{n: t.clone() for n, t in g.state_dict().items()} for g in groups]
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    batch = labelled_batch(TASKS, n=5)
    preds = m(batch)
    sum((preds[t.name] - batch.y[:, i]).pow(2).mean() for i, t in enumerate(TASKS)).backward()
    opt.step()
    for i, group in enumerate(groups):
        changed = any(not torch.equal(t, before[i][n]) for n, t in group.state_dict().items())
        assert changed == (i >= k), (i, k)


def test_freeze_whole_encoder_and_unfreeze():
    m = model()
    m.freeze_encoder()
    assert not any(p.requires_grad for p in m.encoder.parameters())
    m.train()
    assert not any(mod.training for mod in m.encoder.modules())
    assert m.head.training
    m.unfreeze_encoder()
    m.train()
    assert all(p.requires_grad for p in m.encoder.parameters())
    assert all(mod.training for mod in m.encoder.modules())
    with pytest.raises(ValueError, match=r"n_groups must be in 0\.\.5"):
        m.freeze_encoder(6)


def test_build_model_errors_name_the_section():
    head = {"name": "single", "task": "gap_pbe"}
    with pytest.raises(ValueError, match=r"model\.encoder: unknown encoder 'schnet'"):
        build_model({"name": "schnet"}, head, TASKS)
    with pytest.raises(ValueError, match=r"model\.head: head 'single' has no option 'tsk'.*did you mean 'task'"):
        build_model({"name": "cgcnn"}, {"name": "single", "tsk": "gap_pbe"}, TASKS)
    with pytest.raises(ValueError, match=r"model\.head: needs a mapping with a 'name' key"):
        build_model({"name": "cgcnn"}, {"task": "gap_pbe"}, TASKS)
    with pytest.raises(ExpressionError, match="task 'gap_hse'"):
        build_model({"name": "cgcnn"}, {"name": "elv", "latents": ["gap_pbe"],
                                        "expressions": {"gap_hse": "gap_pbe +"}}, TASKS)
