"""`mnistlab inspect`: one training step taken apart, checked against a hand computation."""

import json
import re

import pytest
import torch

from mnistlab.cli import main
from mnistlab.base.data import load
from mnistlab.base.errors import CheckpointError, UsageError
from mnistlab.commands.inspection import format_report, inspect_step, language_from_environment
from mnistlab.base.models import architecture, build_model

HIDDEN = (3, 2)  # a 784-3-2-10 network: small enough to backpropagate by hand
SEED, BATCH, LR = 3, 16, 0.05


@pytest.fixture(scope="module")
def tiny(tiny_idx_dir):
    return inspect_step("mlp", hidden=HIDDEN, batch_size=BATCH, seed=SEED, lr=LR, data_dir=tiny_idx_dir)


def by_hand(weights, x, y):
    """Loss and gradients of Linear-ReLU-Linear-ReLU-Linear-LogSoftmax + NLLLoss, written out."""
    w1, b1, w2, b2, w3, b3 = weights
    z1 = x @ w1.T + b1
    a1 = z1.clamp(min=0)
    z2 = a1 @ w2.T + b2
    a2 = z2.clamp(min=0)
    z3 = a2 @ w3.T + b3
    p = z3.exp() / z3.exp().sum(dim=1, keepdim=True)
    n = len(y)
    loss = -p[torch.arange(n), y].log().mean()
    dz3 = (p - torch.nn.functional.one_hot(y, 10).double()) / n
    dz2 = (dz3 @ w3) * (z2 > 0)
    dz1 = (dz2 @ w2) * (z1 > 0)
    grads = [dz1.T @ x, dz1.sum(0), dz2.T @ a1, dz2.sum(0), dz3.T @ a2, dz3.sum(0)]
    return float(loss), grads


def test_numbers_match_a_hand_computation(tiny, tiny_idx_dir):
    # The same network, initialised the documented way: torch.manual_seed(seed), then build.
    torch.manual_seed(SEED)
    net = build_model(architecture("mlp", (1, 28, 28), 10, hidden=HIDDEN, output="log_softmax"))
    weights = [p.detach().double() for p in net.parameters()]
    train = load("mnist", tiny_idx_dir).train
    indices = torch.tensor(tiny["batch"]["indices"])
    x = (train.images[indices].double().flatten(1) / 255 - 0.5) / 0.5
    y = train.labels[indices]

    loss, grads = by_hand(weights, x, y)
    assert all(g.norm() > 0 for g in grads), "pick a seed where no layer is entirely dead"
    assert tiny["loss"] == pytest.approx(loss, rel=1e-5)
    assert [p["name"] for p in tiny["parameters"]] == ["1.weight", "1.bias", "3.weight", "3.bias",
                                                        "5.weight", "5.bias"]
    for row, w, g in zip(tiny["parameters"], weights, grads):
        assert row["shape"] == list(w.shape)
        assert row["norm"] == pytest.approx(float(w.norm()), rel=1e-6)
        assert row["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-4)
        assert row["update_norm"] == pytest.approx(LR * float(g.norm()), rel=1e-3)
        assert row["update_is_lr_times_grad"]
    assert tiny["model"]["total_parameters"] == sum(w.numel() for w in weights) == 784 * 3 + 3 + 3 * 2 + 2 + 2 * 10 + 10


def test_batch_is_a_seeded_random_draw_from_the_train_split(tiny, tiny_idx_dir):
    batch = tiny["batch"]
    labels = load("mnist", tiny_idx_dir).train.labels[torch.tensor(batch["indices"])]
    assert batch["shape"] == [BATCH, 1, 28, 28]
    assert len(set(batch["indices"])) == BATCH
    assert list(batch["label_counts"].values()) == torch.bincount(labels, minlength=10).tolist()
    other = inspect_step("mlp", hidden=HIDDEN, batch_size=BATCH, seed=SEED + 1, data_dir=tiny_idx_dir)
    assert other["batch"]["indices"] != batch["indices"]


def test_grad_fn_chain_runs_from_the_loss_to_the_first_layer(tiny):
    chain = tiny["grad_fn_chain"]
    assert [step["node"] for step in chain] == [
        "NllLossBackward0", "LogSoftmaxBackward0", "AddmmBackward0", "ReluBackward0", "AddmmBackward0",
        "ReluBackward0", "AddmmBackward0", "TBackward0", "AccumulateGrad"]
    assert chain[-1]["parameter"] == "1.weight"
    # Every parameter is reached exactly once: on the main path or on a side branch.
    reached = [s["parameter"] for s in chain if s["parameter"]]
    reached += [b["parameter"] for s in chain for b in s["branches"]]
    assert sorted(reached) == sorted(p["name"] for p in tiny["parameters"])
    assert {"path": ["TBackward0", "AccumulateGrad"], "parameter": "5.weight"} in chain[2]["branches"]


def test_finite_differences_agree_with_autograd(tiny):
    fd = tiny["finite_differences"]
    assert fd["dtype"] == "float64" and len(fd["entries"]) == 5
    assert len({e["parameter"] for e in fd["entries"]}) == 5  # spread across the tensors
    for e in fd["entries"]:
        assert e["autograd"] != 0
        assert e["numerical"] == pytest.approx(e["autograd"], rel=1e-4)
    assert fd["max_relative_error"] < 1e-4


def test_gradients_accumulate_without_zero_grad(tiny):
    acc = tiny["accumulation"]
    assert acc["ratio"] == pytest.approx(2.0, rel=1e-6)
    assert acc["max_abs_diff_from_sum"] <= 1e-6 * acc["first_grad_norm"]
    assert acc["grads_after_zero_grad"] == "None"


def test_no_grad_stops_recording_but_freezes_nothing(tiny):
    ng = tiny["no_grad"]
    assert ng["outside"] == {"requires_grad": True, "grad_fn": "LogSoftmaxBackward0"}
    assert ng["inside"] == {"requires_grad": False, "grad_fn": None}
    assert ng["weights_require_grad"] is True


def test_caller_random_state_is_left_alone(tiny_idx_dir):
    state = torch.random.get_rng_state()
    inspect_step("mlp", hidden=HIDDEN, batch_size=4, data_dir=tiny_idx_dir)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_cnn_chain_ends_at_the_first_convolution(tiny_idx_dir):
    result = inspect_step("cnn", batch_size=4, seed=1, data_dir=tiny_idx_dir)
    assert result["grad_fn_chain"][-1] == {"node": "AccumulateGrad", "parameter": "0.weight", "branches": []}
    assert "ConvolutionBackward0" in [s["node"] for s in result["grad_fn_chain"]]
    assert result["finite_differences"]["max_relative_error"] < 1e-4
    assert all(p["update_is_lr_times_grad"] for p in result["parameters"])


def test_a_trained_run_is_inspected_on_its_own_dataset(tiny_run, tiny_idx_dir):
    result = inspect_step(tiny_run, batch_size=8, data_dir=tiny_idx_dir)
    assert result["model"]["trained"] and str(tiny_run) in result["model"]["source"]
    assert result["model"]["loss_function"] == "CrossEntropyLoss"  # the default recipe outputs logits
    assert result["batch"]["dataset"] == "mnist"
    assert result["loss"] < result["chance_loss"]  # it learned something
    assert "untrained" not in format_report(result)


def test_bad_arguments_are_user_errors(tiny_idx_dir, tmp_path):
    with pytest.raises(UsageError, match="lr"):
        inspect_step(lr=0, data_dir=tiny_idx_dir)
    with pytest.raises(UsageError, match="larger than the training split"):
        inspect_step(batch_size=10_000, data_dir=tiny_idx_dir)
    with pytest.raises(CheckpointError, match="neither mlp nor cnn"):
        inspect_step("mpl", data_dir=tiny_idx_dir)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        inspect_step(tmp_path, data_dir=tiny_idx_dir)


def test_report_walks_through_every_section(tiny):
    text = format_report(tiny)
    for heading in ("1. The network", "2. A batch and its loss", "3. The grad_fn chain",
                    "4. backward() and one step of SGD (lr = 0.05)", "5. Checking autograd with finite differences",
                    "6. Forgetting zero_grad()", "7. torch.no_grad()"):
        assert heading in text
    assert "AccumulateGrad -> .grad of 1.weight" in text
    assert "Each weight moved by lr x its gradient" in text and ": OK." in text
    assert "every .grad is None" in text


def test_the_batch_shows_each_class_above_its_number_of_images(tiny):
    lines = format_report(tiny).splitlines()
    at = lines.index("Images of each class in the batch:")
    classes, counts = lines[at + 1].split(), lines[at + 2].split()
    assert classes == ["class", *tiny["batch"]["label_counts"]]
    assert counts == ["images", *map(str, tiny["batch"]["label_counts"].values())]
    assert sum(map(int, counts[1:])) == BATCH
    ends = [[m.end() for m in re.finditer(r"\S+", line)][1:] for line in lines[at + 1:at + 3]]
    assert ends[0] == ends[1]  # aligned: each count ends in the column where its class name ends


def test_cli_json_has_the_documented_keys(tiny_idx_dir, capsys):
    assert main(["inspect", "--data-dir", str(tiny_idx_dir), "--batch-size", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"model", "batch", "loss", "chance_loss", "grad_fn_chain", "lr", "grads_before_backward",
                           "parameters", "finite_differences", "accumulation", "no_grad"}
    assert result["lr"] == 0.003 and result["batch"]["shape"] == [8, 1, 28, 28]
    assert set(result["parameters"][0]) >= {"name", "shape", "norm", "grad_norm", "update_norm",
                                            "max_abs_diff_update_vs_lr_grad", "update_is_lr_times_grad"}


def test_cli_text_report(tiny_idx_dir, capsys, monkeypatch):
    set_locale(monkeypatch, LANG="C.UTF-8")
    assert main(["inspect", "--data-dir", str(tiny_idx_dir), "--batch-size", "8", "--lr", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "4. backward() and one step of SGD (lr = 0.01)" in out and "7. torch.no_grad()" in out


@pytest.mark.parametrize("flags", [["--lr", "0"], ["--lr", "-1"], ["--lr", "nan"], ["--batch-size", "0"],
                                   ["--batch-size", "two"]])
def test_cli_rejects_bad_values_with_one_line(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and flags[0] in err


def test_cli_batch_larger_than_the_data_is_a_usage_error(tiny_idx_dir, capsys):
    assert main(["inspect", "--data-dir", str(tiny_idx_dir), "--batch-size", "100000"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cli_unknown_model_is_one_line(tiny_idx_dir, capsys):
    assert main(["inspect", "--data-dir", str(tiny_idx_dir), "--model", "mpl"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "'mpl'" in err


# ---------------------------------------------------------------------------
# The report in French

NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)*(?:e[-+]?\d+)?")


def set_locale(monkeypatch, **variables: str) -> None:
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("model", ["fresh mlp", "trained run"])
def test_the_french_report_has_exactly_the_english_numbers(tiny, tiny_run, tiny_idx_dir, model):
    result = tiny if model == "fresh mlp" else inspect_step(tiny_run, batch_size=8, data_dir=tiny_idx_dir)
    english, french = format_report(result, "en"), format_report(result, "fr")
    assert NUMBER.findall(french) == NUMBER.findall(english)
    assert len(NUMBER.findall(english)) > 100
    assert len(french.splitlines()) == len(english.splitlines())
    english_words = {"taken", "apart", "batch", "remembers", "Forgetting", "outputs", "without"}
    assert not english_words & set(re.findall(r"[A-Za-z]+", french))
    for phrase in ("1. Le réseau", "2. Un lot et sa perte", "3. La chaîne des grad_fn",
                   "6. Oublier zero_grad() : les gradients s'accumulent",
                   "7. torch.no_grad() : des sorties sans graphe", "chaque .grad vaut None"):
        assert phrase in french


def test_the_locale_chooses_french_and_english_stays_the_default(monkeypatch):
    set_locale(monkeypatch)
    assert language_from_environment() == "en"
    set_locale(monkeypatch, LANG="fr_FR.UTF-8")
    assert language_from_environment() == "fr"
    set_locale(monkeypatch, LANG="fr_CA.UTF-8", LC_MESSAGES="en_GB.UTF-8")
    assert language_from_environment() == "en"  # LC_MESSAGES before LANG
    set_locale(monkeypatch, LANG="en_US.UTF-8", LC_ALL="fr_BE.UTF-8")
    assert language_from_environment() == "fr"  # LC_ALL before everything
    set_locale(monkeypatch, LANG="de_DE.UTF-8")
    assert language_from_environment() == "en"


def test_cli_lang_fr_and_the_french_locale(tiny_idx_dir, capsys, monkeypatch):
    flags = ["inspect", "--data-dir", str(tiny_idx_dir), "--batch-size", "8"]
    set_locale(monkeypatch, LANG="en_US.UTF-8")
    assert main([*flags, "--lang", "fr"]) == 0
    by_flag = capsys.readouterr().out
    assert by_flag.startswith("Un pas d'entraînement d'un mlp neuf (non entraîné, initialisé avec la graine 0)")
    set_locale(monkeypatch, LANG="fr_FR.UTF-8")
    assert main(flags) == 0
    assert capsys.readouterr().out == by_flag
    assert main([*flags, "--lang", "en"]) == 0
    assert capsys.readouterr().out.startswith("One training step of fresh mlp")
    assert main([*flags, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["name"] == "mlp"  # JSON keys do not change with the language


def test_an_unknown_language_is_a_usage_error(tiny):
    with pytest.raises(UsageError, match="unknown language 'de'"):
        format_report(tiny, "de")


def test_a_trained_model_is_inspected_on_the_data_it_was_trained_from(tiny_run):
    result = inspect_step(tiny_run, batch_size=8)  # no data_dir: the run's own folder, not a download
    assert result["batch"]["shape"] == [8, 1, 28, 28] and sum(result["batch"]["label_counts"].values()) == 8
