"""bncourse.flow (batch norm with a stop-gradient on its statistics) and bncourse.lab.diagram."""

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as TF
from matplotlib.text import Annotation

import bncourse as bn
from bncourse.lab import diagram, flow


def make(shape, device, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 2 + 3
    gamma = torch.rand(shape[1], generator=g, dtype=dtype) + 0.5
    beta = torch.randn(shape[1], generator=g, dtype=dtype)
    dout = torch.randn(shape, generator=g, dtype=dtype)
    return [t.to(device) for t in (x, gamma, beta, dout)]


@pytest.mark.parametrize("shape", [(8, 3), (5, 4, 6)])
def test_forward_and_running_stats_are_batch_norms(shape, device):
    x, gamma, beta, _ = make(shape, device)
    rm, rv = torch.zeros(shape[1], dtype=x.dtype, device=device), torch.ones_like(gamma)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    out = flow.stop_grad_batch_norm(x, rm, rv, gamma, beta, momentum=0.3, eps=1e-3)
    ref = TF.batch_norm(x, rm_ref, rv_ref, gamma, beta, training=True, momentum=0.3, eps=1e-3)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(rm, rm_ref)
    torch.testing.assert_close(rv, rv_ref)


@pytest.mark.parametrize("shape", [(8, 3), (5, 4, 6)])
def test_backward_treats_the_statistics_as_constants(shape, device):
    x, gamma, beta, dout = make(shape, device)
    xs = [t.clone().requires_grad_() for t in (x, gamma, beta)]
    flow.stop_grad_batch_norm(xs[0], None, None, xs[1], xs[2]).backward(dout)
    _, cache = bn.functional.batch_norm_forward(x, gamma, beta)
    true_dx, true_dgamma, true_dbeta = bn.functional.batch_norm_backward_fused(dout, cache)
    view = (1, -1) + (1,) * (x.dim() - 2)
    torch.testing.assert_close(xs[0].grad, dout * (gamma * cache.inv_std).reshape(view))
    assert (xs[0].grad - true_dx).abs().max() > 0.1  # really a different gradient
    torch.testing.assert_close(xs[1].grad, true_dgamma)  # gamma and beta see the same gradient
    torch.testing.assert_close(xs[2].grad, true_dbeta)


def test_without_affine_parameters(device):
    x, _, _, dout = make((6, 2), device)
    x.requires_grad_()
    out = flow.stop_grad_batch_norm(x, None, None)
    torch.testing.assert_close(out, TF.batch_norm(x, None, None, training=True))
    out.backward(dout)
    torch.testing.assert_close(x.grad, dout / torch.sqrt(x.var(0, correction=0) + 1e-5))


def test_a_bias_before_it_gets_a_gradient_that_changes_nothing(device):
    torch.manual_seed(0)
    x = torch.randn(16, 5, dtype=torch.float64, device=device)
    for norm, expect_zero in ((bn.nn.BatchNorm1d, True), (flow.StopGradBatchNorm1d, False)):
        torch.manual_seed(1)
        net = torch.nn.Sequential(torch.nn.Linear(5, 4), norm(4), torch.nn.Tanh())
        net = net.to(device, torch.float64)
        net(x).square().sum().backward()
        bias_grad = net[0].bias.grad.abs().max().item()
        assert (bias_grad < 1e-10) if expect_zero else (bias_grad > 1e-2)
        before = net(x)
        with torch.no_grad():
            net[0].bias.add_(10.0)
        torch.testing.assert_close(net(x), before)  # in training mode the bias changes nothing


def test_layer_trains_and_evaluates_as_batchnorm1d(device):
    torch.manual_seed(0)
    ours, ref = flow.StopGradBatchNorm1d(3, momentum=None), bn.nn.BatchNorm1d(3, momentum=None)
    ours, ref = ours.to(device), ref.to(device)
    for _ in range(3):
        x = torch.randn(10, 3, device=device) * 2 + 1
        torch.testing.assert_close(ours(x), ref(x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name))
    ours.eval(), ref.eval()
    x = torch.randn(4, 3, device=device)
    torch.testing.assert_close(ours(x), ref(x))
    assert set(ours.state_dict()) == set(torch.nn.BatchNorm1d(3).state_dict())


def test_clear_errors():
    layer = flow.StopGradBatchNorm1d(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(1, 3))
    with pytest.raises(ValueError, match="expected 3 channels"):
        layer(torch.randn(4, 2))
    with pytest.raises(ValueError, match="track_running_stats=True"):
        flow.StopGradBatchNorm1d(3, track_running_stats=False)
    with pytest.raises(TypeError, match="floating-point"):
        flow.stop_grad_batch_norm(torch.ones(4, 3, dtype=torch.long), None, None)
    with pytest.raises(ValueError, match=r"weight of shape \(3,\)"):
        flow.stop_grad_batch_norm(torch.randn(4, 3), None, None, torch.ones(2))
    layer.eval()
    assert layer(torch.randn(1, 3)).shape == (1, 3)  # eval mode uses the running statistics


def run_recorded(norm, device, steps=30, lr=0.2):
    """A Linear -> norm -> ReLU -> Linear net trained by bn.train with a FirstLayerRecord."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 6, generator=g, dtype=torch.float64)  # in [0, 1]: an offset to remove
    y = (x[:, 0] > x[:, 1]).long()
    data = bn.data.Split(x, y, x[:16], y[:16]).to(device)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), norm(5), torch.nn.ReLU(),
                              torch.nn.Linear(5, 2)).to(device, torch.float64)
    w0, b0 = net[0].weight.detach().clone(), net[0].bias.detach().clone()
    record = flow.FirstLayerRecord(net[0], net[1], lr)
    bn.train([net], data, steps, lr, batch_size=32, progress=False,
             on_step=bn.trainer.each([record]))
    return net, w0, b0, record


def test_first_layer_record_splits_the_norm_change_as_derived(device):
    net, w0, b0, rec = run_recorded(flow.StopGradBatchNorm1d, device)
    w, b = net[0].weight.detach(), net[0].bias.detach()
    assert len(rec.drift) == 30
    torch.testing.assert_close(rec.drift[-1], ((b - b0).norm() / b0.norm()).item())
    torch.testing.assert_close(rec.row_norm[-1],
                               (w.norm(dim=1).mean() / w0.norm(dim=1).mean()).item())
    # the recorded terms add up to the change of sum |w|^2, step by step
    change = (w.square().sum() - w0.square().sum()).item()
    total = (rec.first_order + rec.second_order).sum()
    assert abs(total - change) < 1e-9 * max(1.0, abs(change))
    # with the stop-gradient: first order = part along x_hat + constant part, both non-zero
    torch.testing.assert_close(rec.first_order, rec.along_x_hat + rec.constant,
                               rtol=1e-9, atol=1e-12)
    assert abs(rec.constant).max() > 1e-4 and abs(rec.along_x_hat).max() > 1e-4
    # dL/db = (gamma / s) dL/dbeta: the bias has moved by the accumulated (gamma / s) delta beta
    torch.testing.assert_close(b - b0, rec.bias_driven, rtol=1e-9, atol=1e-12)
    assert (b - b0).abs().max() > 1e-3
    torch.testing.assert_close(rec.w0, w0)
    torch.testing.assert_close(rec.b0, b0)


def test_first_layer_record_gain_and_drive_of_one_step(device):
    # one plain SGD step by hand, then the probe: gain is gamma / s before the step, and the
    # bias moved by gain * (beta's step)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 6, generator=g, dtype=torch.float64).to(device)
    y = (x[:, 0] > x[:, 1]).long()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), flow.StopGradBatchNorm1d(5),
                              torch.nn.ReLU(), torch.nn.Linear(5, 2)).to(device, torch.float64)
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
    w0, b0, gamma0, beta0 = (t.detach().clone() for t in (net[0].weight, net[0].bias,
                                                          net[1].weight, net[1].bias))
    record = flow.FirstLayerRecord(net[0], net[1], 0.3)
    TF.cross_entropy(net(x), y).backward()
    with torch.no_grad():
        for p in net.parameters():
            p.sub_(0.3 * p.grad)
    record(1, net, (x, y))
    gain = gamma0 / torch.sqrt((x @ w0.T + b0).var(0, correction=0) + 1e-5)
    torch.testing.assert_close(record.gain[0], gain.mean().item())
    torch.testing.assert_close(record.bias_driven, gain * (net[1].bias.detach() - beta0))
    torch.testing.assert_close(net[0].bias.detach() - b0, record.bias_driven)


def test_first_layer_record_true_backward_has_no_first_order_growth(device):
    _, _, _, rec = run_recorded(bn.nn.BatchNorm1d, device)
    assert abs(rec.constant).max() < 1e-12           # dL/db = 0
    assert abs(rec.along_x_hat).max() > 1e-4         # gamma * dL/dgamma is not 0 ...
    assert abs(rec.first_order).max() < 1e-3 * abs(rec.along_x_hat).max()  # ... but w . grad is
    assert rec.drift.max() < 1e-10
    assert rec.bias_driven.abs().max() > 1e-4  # beta moved, and the bias was not dragged along


def test_first_layer_record_errors():
    with pytest.raises(ValueError, match="with a bias"):
        flow.FirstLayerRecord(torch.nn.Linear(3, 2, bias=False), bn.nn.BatchNorm1d(2), 0.1)
    with pytest.raises(ValueError, match="with a weight"):
        flow.FirstLayerRecord(torch.nn.Linear(3, 2), bn.nn.BatchNorm1d(2, affine=False), 0.1)
    with pytest.raises(ValueError, match=r"a bias \(beta\)"):
        flow.FirstLayerRecord(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2, bias=False), 0.1)
    linear, norm = torch.nn.Linear(3, 2), bn.nn.BatchNorm1d(2)
    record = flow.FirstLayerRecord(linear, norm, 0.1)
    with pytest.raises(RuntimeError, match="after an SGD step"):
        record(1, torch.nn.Sequential(linear, norm))


def test_bn_graph_draws_every_node_and_edge():
    ax = diagram.draw_bn_graph()
    texts = [t.get_text() for t in ax.texts]
    for _, _, label in diagram.BN_NODES.values():
        assert label in texts
    for _, _, _, label, *_ in diagram.BN_EDGES:  # every arrow carries its local derivative
        assert label and label in texts
    arrows = [c for c in ax.get_children() if isinstance(c, Annotation)]
    assert len(arrows) == len(diagram.BN_EDGES)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["the direct path", r"through $\mu$", r"through $\sigma^2$", "parameters"]
    # shown at its own size in the book's column (about 7 inches): nothing is shrunk
    assert ax.figure.get_size_inches()[0] <= 6.5
    ax.figure.canvas.draw()  # the mathtext labels render
    renderer = ax.figure.canvas.get_renderer()
    labels = [t for t in ax.texts if not isinstance(t, Annotation)]  # not the arrows
    boxes = [t.get_window_extent(renderer) for t in labels]
    figure_box = ax.figure.bbox
    for t, box in zip(labels, boxes, strict=True):  # every label inside the figure
        assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1, t.get_text()
        assert figure_box.y0 <= box.y0 and box.y1 <= figure_box.y1, t.get_text()
    node_boxes = [t.get_bbox_patch().get_window_extent(renderer) for t in labels
                  if t.get_bbox_patch() is not None]
    for i, a in enumerate(node_boxes):  # no two nodes overlap
        for b in node_boxes[i + 1:]:
            assert not a.overlaps(b)
    for t, box in zip(labels, boxes, strict=True):  # no arrow label covers a node
        if t.get_bbox_patch() is None:
            assert not any(box.overlaps(n) for n in node_boxes), t.get_text()
    plt.close(ax.figure)


def test_draw_graph_rejects_unknown_nodes_paths_and_offsets():
    nodes = {"a": (0, 0, "a"), "b": (1, 0, "b")}
    with pytest.raises(ValueError, match="unknown node"):
        diagram.draw_graph(nodes, [("a", "c", "direct", "")])
    with pytest.raises(ValueError, match="has path 'nope'"):
        diagram.draw_graph(nodes, [("a", "b", "nope", "")])
    with pytest.raises(ValueError, match="non-zero number of inches"):
        diagram.draw_graph(nodes, [("a", "b", "direct", "x", 0)])
    plt.close("all")


def test_edge_label_offset_picks_the_side():
    nodes = {"a": (0, 0, "a"), "b": (2, 0, "b")}
    ax = diagram.draw_graph(nodes, [("a", "b", "direct", "above"), ("b", "a", "mu", "below", 0.3)])
    label_y = {t.get_text(): t.get_position()[1] for t in ax.texts}
    # a rightward arrow's left is up; a leftward arrow's left is down
    assert label_y["above"] == pytest.approx(0.1) and label_y["below"] == pytest.approx(-0.3)
    plt.close(ax.figure)
