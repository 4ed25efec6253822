"""The notebook's network and its losses, checked against hand computations."""

import pytest
import torch
from torch import nn

from mnistlab.base.models import architecture, build_model, log_probabilities, loss_function


def notebook_mlp(output="logits"):
    return build_model(architecture("mlp", (1, 28, 28), 10, output=output))


def test_mlp_is_the_notebooks_network():
    linears = [m for m in notebook_mlp() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 128), (128, 64), (64, 10)]
    assert sum(isinstance(m, nn.ReLU) for m in notebook_mlp()) == 2
    assert isinstance(notebook_mlp("log_softmax")[-1], nn.LogSoftmax)


def test_mlp_accepts_images_and_flat_vectors():
    model = notebook_mlp()
    x = torch.randn(5, 1, 28, 28)
    assert torch.equal(model(x), model(x.view(5, -1)))
    assert model(x).shape == (5, 10)


def test_log_softmax_output_gives_probabilities_that_sum_to_one():
    model = notebook_mlp("log_softmax")
    ps = torch.exp(model(torch.randn(4, 784)))
    torch.testing.assert_close(ps.sum(dim=1), torch.ones(4))


def test_cross_entropy_on_logits_equals_nll_on_log_softmax():
    logits, y = torch.randn(64, 10), torch.randint(0, 10, (64,))
    ce = nn.CrossEntropyLoss()(logits, y)
    nll = nn.NLLLoss()(nn.LogSoftmax(dim=1)(logits), y)
    torch.testing.assert_close(ce, nll)
    assert loss_function("log_softmax").__class__ is nn.NLLLoss
    assert loss_function("logits", label_smoothing=0.1).__class__ is nn.CrossEntropyLoss


def test_log_probabilities_agree_between_output_kinds():
    torch.manual_seed(0)
    a = notebook_mlp("logits")
    b = notebook_mlp("log_softmax")
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 784)
    torch.testing.assert_close(log_probabilities(a, "logits", x), log_probabilities(b, "log_softmax", x))


@pytest.mark.parametrize("model, side", [("mlp", 28), ("cnn", 8)])
def test_gradcheck_in_float64(model, side):
    """Autograd's gradients equal finite differences (the cnn on small images: each input is a check)."""
    torch.manual_seed(0)
    arch = architecture(model, (1, side, side), 10, hidden=(6, 5), output="log_softmax")
    net = build_model(arch).double().eval()  # eval: batch norm uses running statistics, dropout is off
    x = torch.randn(1, 1, side, side, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(net, (x,), eps=1e-6, atol=1e-5)


def test_one_sgd_step_is_w_minus_lr_times_grad():
    torch.manual_seed(0)
    model = notebook_mlp("log_softmax")
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    lr = 0.003
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    nn.NLLLoss()(model(x), y).backward()
    optimizer.step()
    for w0, p in zip(before, model.parameters()):
        torch.testing.assert_close(p.detach(), w0 - lr * p.grad)


def test_hidden_sizes_and_activation_are_configurable():
    arch = architecture("mlp", (1, 28, 28), 10, hidden=(32, 16, 8), activation="tanh")
    model = build_model(arch)
    sizes = [m.out_features for m in model if isinstance(m, nn.Linear)]
    assert sizes == [32, 16, 8, 10]
    assert any(isinstance(m, nn.Tanh) for m in model)


def test_cnn_output_shape():
    model = build_model(architecture("cnn", (1, 28, 28), 10))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_bad_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="bad architecture"):
        build_model({"model": "transformer"})


def test_every_activation_a_config_accepts_has_a_module():
    from mnistlab.base.config import ACTIVATIONS
    from mnistlab.base.models import ACTIVATION_MODULES

    assert set(ACTIVATIONS) == set(ACTIVATION_MODULES)


@pytest.mark.parametrize("kind,output", [("mlp", "logits"), ("mlp", "log_softmax"), ("cnn", "logits")])
def test_running_the_layers_one_by_one_is_model_x_bitwise_with_the_outputs_kept(kind, output):
    from mnistlab.base.models import run_layers

    torch.manual_seed(0)
    model = build_model(architecture(kind, (1, 28, 28), 10, output=output)).eval()
    x = torch.randn(3, 1, 28, 28)
    keep = [i for i, m in enumerate(model) if isinstance(m, nn.ReLU)]
    caught = {}
    for i in keep:
        model[i].register_forward_hook(lambda module, args, out, i=i: caught.__setitem__(i, out))
    with torch.no_grad():
        expected = model(x)  # through nn.Module.__call__, hooks and all
        hooked_out, hooked_kept = run_layers(model, x, keep)  # hooks present: model(x) itself
        for i in keep:
            model[i]._forward_hooks.clear()
        out, kept = run_layers(model, x, keep)  # no hooks: layer by layer
    assert torch.equal(out, expected) and torch.equal(hooked_out, expected)
    assert sorted(kept) == sorted(hooked_kept) == keep
    for i in keep:
        assert torch.equal(kept[i], caught[i]) and torch.equal(hooked_kept[i], caught[i])
    assert not any(model[i]._forward_hooks for i in keep)  # its own catching hooks are gone again


def test_hooks_on_a_model_still_run_when_its_layers_are_run():
    from mnistlab.base.models import run_layers

    model = notebook_mlp().eval()
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    with torch.no_grad():
        run_layers(model, torch.randn(4, 784))
    assert calls == [4]
