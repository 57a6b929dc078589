"""count_params, count_flops (FlopCounterMode) and the per-layer report."""

import torch
from torch import nn

import smoothcompress as sc


def test_count_params_includes_bn_and_bias():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Linear(4, 2))
    assert sc.count_params(m) == (4 * 3 * 9 + 4) + (4 + 4) + (4 * 2 + 2)


def test_count_params_nonzero():
    m = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        m.weight.zero_()
        m.weight[0, 0] = 1.0
    assert sc.count_params(m, nonzero=True) == 1


def test_count_flops_conv_and_linear():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert sc.count_flops(conv, (2, 3, 16, 16)) == 2 * 2 * 8 * 3 * 9 * 16 * 16
    lin = nn.Linear(10, 5)
    assert sc.count_flops(lin, (4, 10)) == 2 * 4 * 10 * 5


def test_count_flops_leaves_bn_stats_alone():
    model = sc.create_model("resnet20", width=4).train()
    before = model.bn1.running_mean.clone()
    sc.count_flops(model, (1, 3, 32, 32))
    assert torch.equal(model.bn1.running_mean, before) and model.training


def test_layer_report_identity():
    model = sc.create_model("resnet20", width=4)
    rep = sc.layer_report(model, model, input_shape=(1, 3, 32, 32))
    assert rep.rate == 0.0
    assert all(r.status == "dense" and r.params_before == r.params_after for r in rep.rows)
    assert sum(r.flops_before for r in rep.rows) <= rep.flops_before
    text = str(rep)
    assert "layers.0.0.conv1" in text and "total params" in text
    assert rep.to_dict()["rate"] == 0.0
