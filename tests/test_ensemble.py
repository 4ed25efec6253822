"""train --ensemble K: K networks trained at once, saved as one checkpoint whose prediction is the mean
of their probabilities; evaluate, predict and resume take it like any run."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mnistlab.core.checkpoint import load_checkpoint, save_checkpoint
from mnistlab.cli import main
from mnistlab.base.config import recipe
from mnistlab.base.models import Ensemble, architecture, build_model
from mnistlab.core.engine import resume, train


def small(**overrides):
    # No shifts: the tiny dataset's class *is* the position of a block.
    base = dict(epochs=2, batch_size=32, device="cpu", shift=0, train_size=160, val_size=40, ensemble=3, seed=4)
    return recipe("default", **{**base, **overrides})


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory, tiny_idx_dir):
    out = tmp_path_factory.mktemp("ensemble") / "run"
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run outside `isolated_cache`
        mp.setenv("MNISTLAB_DATA", str(tmp_path_factory.mktemp("cache")))
        return train(small(), out=out, data_dir=tiny_idx_dir)


@pytest.mark.parametrize("output", ["logits", "log_softmax"])
def test_an_ensembles_probabilities_are_the_mean_of_its_members(output):
    arch = architecture("mlp", (1, 28, 28), 10, (16,), output=output)
    torch.manual_seed(0)
    members = [build_model(arch) for _ in range(3)]
    x = torch.randn(5, 1, 28, 28)
    mean = torch.stack([torch.softmax(m(x), 1) if output == "logits" else m(x).exp() for m in members]).mean(0)
    torch.testing.assert_close(Ensemble(members, output)(x).exp(), mean)


def test_the_checkpoint_holds_the_stack_and_round_trips(ensemble_run, tmp_path):
    meta = json.loads((ensemble_run.run_dir / "model.json").read_text())
    assert meta["ensemble"] == 3 and meta["architecture"]["hidden"] == [128, 64]
    weights = load_file(str(ensemble_run.run_dir / "model.safetensors"))
    assert {name.split(".")[1] for name in weights} == {"0", "1", "2"}  # members.<k>.<tensor>
    ckpt = load_checkpoint(ensemble_run.run_dir)
    assert isinstance(ckpt.model, Ensemble) and len(ckpt.model.members) == 3
    save_checkpoint(tmp_path, ckpt.model.state_dict(), ckpt.meta)
    again = load_checkpoint(tmp_path)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(again.model(x), ensemble_run.model.cpu()(x))


def test_member_k_is_the_single_run_with_seed_plus_k_in_the_first_seeds_order(ensemble_run, tmp_path, tiny_idx_dir):
    single = train(small(ensemble=1, seed=5, data_seed=4), out=tmp_path / "single", data_dir=tiny_idx_dir)
    weights = load_file(str(single.run_dir / "model.safetensors"))
    member = ensemble_run.model.members[1].state_dict()
    for name, tensor in weights.items():
        torch.testing.assert_close(member[name].cpu(), tensor, rtol=1e-4, atol=1e-4)


def test_evaluate_reports_the_ensemble_and_each_member(ensemble_run, capsys):
    assert main(["evaluate", str(ensemble_run.run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["member_accuracy"]) == 3 and result["total"] == 200
    assert main(["evaluate", str(ensemble_run.run_dir)]) == 0
    assert "ensemble of 3: each member alone" in capsys.readouterr().out


def test_predict_gives_the_mean_of_the_members_probabilities(ensemble_run, tiny_idx_dir, capsys):
    assert main(["predict", str(ensemble_run.run_dir), "--test-index", "0", "--json"]) == 0
    probs = torch.tensor(json.loads(capsys.readouterr().out)["probabilities"])
    ckpt = load_checkpoint(ensemble_run.run_dir)
    x, _ = ckpt.load_data(tiny_idx_dir).test.images[:1].float(), None
    x = ((x / 255 - ckpt.mean) / ckpt.std).reshape(1, 1, 28, 28)
    with torch.no_grad():
        members = ckpt.model.member_log_probabilities(x).exp().mean(0)[0]
    torch.testing.assert_close(probs, members, rtol=1e-5, atol=1e-6)


def test_an_interrupted_ensemble_resumes_to_the_same_weights(ensemble_run, tmp_path, tiny_idx_dir):
    train(small(), out=tmp_path / "split", data_dir=tiny_idx_dir, stop_after=1)
    resumed = resume(tmp_path / "split", data_dir=tiny_idx_dir)
    assert resumed.summary["train_loss"] == ensemble_run.summary["train_loss"]
    a, b = load_file(str(ensemble_run.run_dir / "model.safetensors")), load_file(str(resumed.run_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
