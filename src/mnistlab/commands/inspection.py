"""`mnistlab inspect`: the notebook's middle, live, on one real batch.

One training step taken apart: the network and its parameters, the loss on a
batch, the grad_fn chain autograd walks back from the loss, the gradients that
backward() leaves in .grad, the update made by one SGD step (and the check that
it is lr * grad), a finite-difference check of autograd, gradients accumulating
when zero_grad() is skipped, and what torch.no_grad() changes.

`inspect_step` returns everything as plain, JSON-able data; `format_report`
turns that into text a student can follow line by line.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..base import data as data_mod
from ..core.checkpoint import load_checkpoint
from ..base.config import RECIPES, check_lr
from ..base.errors import CheckpointError, UsageError
from ..base.models import architecture, build_model, loss_function

FRESH_MODELS = ("mlp", "cnn")
FD_EPS = 1e-6  # finite-difference step, in weight units: few ReLUs switch within so small a nudge
KINK_TOLERANCE = 1e-5  # slopes at eps and eps/2 further apart than this (relative): a kink in between
KINK_RETRIES = 4  # draws allowed per wanted entry before giving up on smooth entries
FD_ENTRIES = 5  # gradient entries checked by finite differences


# ---------------------------------------------------------------------------
# The network and the batch

def load_network(model: str | os.PathLike, seed: int, dataset: str | None = None,
                 hidden: tuple[int, ...] | None = None, data_dir: str | os.PathLike | None = None,
                 ) -> tuple[nn.Module, dict[str, Any], data_mod.Dataset]:
    """A fresh 'mlp'/'cnn' (the notebook's recipe, initialised from `seed`) or a trained checkpoint,
    and the dataset it is inspected on (its classes give a fresh network its outputs).

    Returns the network, where it came from (source, dataset, output kind, normalisation) and the data.
    """
    name = str(model)
    if name in FRESH_MODELS:
        dataset = dataset or "mnist"
        config = RECIPES["seed"]  # the notebook's network and normalisation
        data = data_mod.load(dataset, data_dir)
        arch = architecture(name, (1, *data_mod.IMAGE_SHAPE), len(data.classes), tuple(hidden or config.hidden),
                            config.activation, config.output)
        with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
            torch.manual_seed(seed)
            net = build_model(arch)
        return net, {"source": f"fresh {name} (untrained, initialised with seed {seed})", "trained": False,
                     "name": name, "init_seed": seed,
                     "dataset": dataset, "output": config.output, "mean": config.mean, "std": config.std}, data
    if hidden:
        raise UsageError("hidden sizes apply to a fresh mlp only, not to a checkpoint")
    if not Path(name).exists():
        raise CheckpointError(f"model {name!r} is neither {' nor '.join(FRESH_MODELS)} "
                              "nor an existing run directory or checkpoint")
    ckpt = load_checkpoint(name)
    dataset = dataset or ckpt.meta["dataset"]
    if dataset == ckpt.meta["dataset"]:
        data = ckpt.load_data(data_dir, any_data=True)  # where it was trained from, its own classes
    else:
        data = data_mod.load(dataset, data_dir)
    if len(data.classes) != len(ckpt.classes):
        raise UsageError(f"{name} has {len(ckpt.classes)} classes but {dataset} has {len(data.classes)}")
    return ckpt.model, {"source": f"checkpoint {name}", "trained": True, "name": name, "dataset": dataset,
                        "output": ckpt.output, "mean": ckpt.mean, "std": ckpt.std}, data


def random_batch(split: data_mod.Split, batch_size: int, seed: int, mean: float,
                 std: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`batch_size` examples drawn without replacement by `seed`: (indices, images, labels)."""
    if batch_size > len(split):
        raise UsageError(f"batch size {batch_size} is larger than the training split ({len(split)} images)")
    indices = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:batch_size]
    x, y = data_mod.to_device(data_mod.Split(split.images[indices], split.labels[indices]),
                              torch.device("cpu"), mean, std)
    return indices, x, y


# ---------------------------------------------------------------------------
# The grad_fn chain

def node_name(fn: Any) -> str:
    return type(fn).__name__


def grad_fn_chain(loss: torch.Tensor, names: dict[int, str]) -> list[dict[str, Any]]:
    """The autograd graph from loss.grad_fn down its longest path (the data's path).

    Each step: the node's name, the parameter it accumulates into (AccumulateGrad
    nodes only), and the side branches that end in parameters, e.g. a Linear
    layer's bias and its weight reached through TBackward0 (the transpose in x @ W.T).
    """
    depths: dict[Any, int] = {}

    def depth(fn: Any) -> int:
        if fn not in depths:
            depths[fn] = 1 + max((depth(c) for c, _ in fn.next_functions if c is not None), default=-1)
        return depths[fn]

    def parameter(fn: Any) -> str | None:
        variable = getattr(fn, "variable", None)
        return None if variable is None else names.get(id(variable), "(a tensor outside the model)")

    def leaves(fn: Any, path: list[str]) -> list[dict[str, Any]]:
        path = path + [node_name(fn)]
        children = [c for c, _ in fn.next_functions if c is not None]
        if not children:
            return [{"path": path, "parameter": parameter(fn)}]
        return [leaf for c in children for leaf in leaves(c, path)]

    chain = []
    fn = loss.grad_fn
    while fn is not None:
        children = [c for c, _ in fn.next_functions if c is not None]
        main = max(children, key=depth, default=None)
        chain.append({"node": node_name(fn), "parameter": parameter(fn),
                      "branches": [leaf for c in children if c is not main for leaf in leaves(c, [])]})
        fn = main
    return chain


# ---------------------------------------------------------------------------
# The checks

def total_norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def relative_error(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0 else abs(a - b) / scale


def finite_differences(initial: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module,
                       seed: int, entries: int, eps: float) -> dict[str, Any]:
    """Autograd against (L(w + eps) - L(w - eps)) / (2 eps) for `entries` weights chosen by `seed`.

    Runs on a float64 copy of the network and batch, so round-off stays far below the
    differences being measured. Entries come from the parameter tensors in turn, among those
    whose gradient is at least 1% of the tensor's largest (tiny ones drown in round-off).
    ReLU and max-pool make the loss piecewise smooth: where one of them switches within
    eps of w, no finite difference is meaningful. Such an entry shows up as a slope that
    changes between eps and eps/2; it is counted as a kink and another entry is drawn.
    """
    net = copy.deepcopy(initial).double()
    x = x.double()
    loss_fn(net(x), y).backward()
    named = list(net.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(named), generator=generator).tolist()

    def slope(weights: torch.Tensor, i: int, h: float) -> float:
        original = float(weights[i])
        losses = []
        for w in (original + h, original - h):
            weights[i] = w
            with torch.no_grad():
                losses.append(float(loss_fn(net(x), y)))
        weights[i] = original
        return (losses[0] - losses[1]) / (2 * h)

    rows, kinks = [], 0
    for attempt in range(KINK_RETRIES * entries):
        if len(rows) == entries:
            break
        name, p = named[order[len(rows) % len(named)]]
        grad = p.grad.flatten()
        candidates = (grad.abs() >= 0.01 * grad.abs().max()).nonzero().flatten()
        flat_index = int(candidates[torch.randint(len(candidates), (1,), generator=generator)])
        weights = p.detach().view(-1)
        numerical = slope(weights, flat_index, eps)
        if relative_error(numerical, slope(weights, flat_index, eps / 2)) > KINK_TOLERANCE:
            kinks += 1
            continue
        autograd = float(grad[flat_index])
        index = [int(i) for i in torch.unravel_index(torch.tensor(flat_index), p.shape)]
        rows.append({"parameter": name, "index": index, "autograd": autograd, "numerical": numerical,
                     "relative_error": relative_error(autograd, numerical)})
    return {"eps": eps, "dtype": "float64", "entries": rows, "kinks_skipped": kinks,
            "max_relative_error": max((r["relative_error"] for r in rows), default=0.0)}


def accumulation(initial: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module,
                 lr: float) -> dict[str, Any]:
    """backward() twice without zero_grad(): .grad holds the sum of the two gradients."""
    net = copy.deepcopy(initial)
    params = list(net.parameters())
    optimizer = torch.optim.SGD(params, lr=lr)

    def backward() -> list[torch.Tensor]:
        loss_fn(net(x), y).backward()
        return [p.grad.detach().clone() for p in params]

    first = backward()
    accumulated = backward()  # no zero_grad() in between
    optimizer.zero_grad()
    second = backward()  # the second gradient on its own
    difference = max(float((a - (g1 + g2)).abs().max()) for a, g1, g2 in zip(accumulated, first, second))
    optimizer.zero_grad()
    after = [p.grad for p in params]
    return {
        "first_grad_norm": total_norm(first),
        "accumulated_grad_norm": total_norm(accumulated),
        "ratio": total_norm(accumulated) / total_norm(first) if total_norm(first) else float("nan"),
        "max_abs_diff_from_sum": difference,
        "grads_after_zero_grad": ("None" if all(g is None for g in after)
                                  else "zero" if all(g is None or not g.any() for g in after) else "non-zero"),
    }


def no_grad_flags(net: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    outside = net(x)
    with torch.no_grad():
        inside = net(x)
    return {
        "outside": {"requires_grad": outside.requires_grad, "grad_fn": node_name(outside.grad_fn)},
        "inside": {"requires_grad": inside.requires_grad,
                   "grad_fn": None if inside.grad_fn is None else node_name(inside.grad_fn)},
        "weights_require_grad": all(p.requires_grad for p in net.parameters()),
    }


# ---------------------------------------------------------------------------
# One step, taken apart

def inspect_step(model: str | os.PathLike = "mlp", *, lr: float = 0.003, batch_size: int = 64, seed: int = 0,
                 dataset: str | None = None, data_dir: str | os.PathLike | None = None,
                 hidden: tuple[int, ...] | None = None, fd_entries: int = FD_ENTRIES,
                 fd_eps: float = FD_EPS) -> dict[str, Any]:
    """Run one SGD step of the notebook on a real training batch and return what happened.

    `model`: 'mlp' (the notebook's network) or 'cnn', freshly initialised from `seed`
    (`hidden` changes the mlp's hidden sizes), or a run directory / checkpoint path.
    `dataset` defaults to mnist, or to the checkpoint's dataset. The loss is the notebook's:
    NLLLoss after LogSoftmax, or CrossEntropyLoss on logits (no label smoothing); the
    optimiser is plain SGD at `lr` (no momentum, no weight decay).

    Returns a JSON-able dict with the keys model, batch, loss, chance_loss, grad_fn_chain, lr,
    grads_before_backward, parameters, finite_differences, accumulation and no_grad.
    """
    check_lr(lr)
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1 (got {batch_size})")
    net, origin, data = load_network(model, seed, dataset, hidden, data_dir)
    indices, x, y = random_batch(data.train, batch_size, seed, origin["mean"], origin["std"])
    loss_fn = loss_function(origin["output"])

    net.train()  # a training step: batch norm (the cnn's) on the batch's statistics
    initial = copy.deepcopy(net)
    named = list(net.named_parameters())
    names = {id(p): name for name, p in named}
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)

    optimizer.zero_grad()
    grads_before = "None" if all(p.grad is None for _, p in named) else "set"
    loss = loss_fn(net(x), y)
    chain = grad_fn_chain(loss, names)
    loss.backward()
    before = [p.detach().clone() for _, p in named]
    grads = [p.grad.detach().clone() for _, p in named]
    optimizer.step()

    parameters = []
    for (name, p), w, g in zip(named, before, grads):
        update = w - p.detach()
        # W_after = W - lr*g is rounded once or twice in float32: allow a few ulps of the weights.
        tolerance = 4 * torch.finfo(w.dtype).eps * float(w.abs().max() + lr * g.abs().max())
        error = float((update - lr * g).abs().max())
        parameters.append({
            "name": name, "shape": list(p.shape), "count": p.numel(),
            "norm": float(w.norm()), "grad_norm": float(g.norm()), "update_norm": float(update.norm()),
            "lr_times_grad_norm": lr * float(g.norm()),
            "max_abs_diff_update_vs_lr_grad": error, "tolerance": tolerance,
            "update_is_lr_times_grad": error <= tolerance,
        })

    classes = list(data.classes)
    counts = torch.bincount(y, minlength=len(classes)).tolist()
    return {
        "model": {
            "source": origin["source"], "trained": origin["trained"], "name": origin["name"],
            "init_seed": origin.get("init_seed"), "text": str(net),
            "output": origin["output"], "loss_function": type(loss_fn).__name__,
            "parameters": [{"name": n, "shape": list(p.shape), "count": p.numel()} for n, p in named],
            "total_parameters": sum(p.numel() for _, p in named),
        },
        "batch": {
            "dataset": data.spec.name, "split": "train", "seed": seed, "indices": indices.tolist(),
            "shape": list(x.shape), "mean": origin["mean"], "std": origin["std"],
            "label_counts": dict(zip(classes, counts)),
        },
        "loss": float(loss.detach()),
        "chance_loss": math.log(len(classes)),
        "grad_fn_chain": chain,
        "lr": lr,
        "grads_before_backward": grads_before,
        "parameters": parameters,
        "finite_differences": finite_differences(initial, x, y, loss_fn, seed, fd_entries, fd_eps),
        "accumulation": accumulation(initial, x, y, loss_fn, lr),
        "no_grad": no_grad_flags(initial, x),
    }


# ---------------------------------------------------------------------------
# Text for people, in English or French
#
# One layout for both languages: every number is formatted once, by the layout, and
# the phrases around it come from LANGUAGES. Numbers keep Python's notation (0.5, not
# 0,5) in French too: they are the values a student sees printed by their own code.

LANGUAGES: dict[str, dict[str, str]] = {
    "en": {
        "fresh": "fresh {name} (untrained, initialised with seed {seed})",
        "checkpoint": "checkpoint {name}",
        "title": "One training step of {source}, taken apart.",
        "s1": "1. The network",
        "params": "Parameters (the tensors the optimiser changes):",
        "total": "total",
        "s2": "2. A batch and its loss",
        "batch": "{n} training images of {dataset} drawn at random (seed {seed}); tensor shape {shape}.",
        "normalised": "Pixels are normalised as (x/255 - {mean}) / {std}.",
        "labels": "Images of each class in the batch:",
        "class": "class",
        "images": "images",
        "chance": "(Guessing every class with equal probability gives ln {k} = {chance}",
        "chance_fresh": "; an untrained network starts near it.)",
        "s3": "3. The grad_fn chain",
        "remembers": "The loss remembers how it was computed: loss.grad_fn is {node}.",
        "following": "Following .next_functions from the loss back to the first layer:",
        "grad_of": " -> .grad of {name}",
        "via": " (via {path})",
        "feeds": "also feeds {side}",
        "walks": "backward() walks this graph from the loss to the AccumulateGrad nodes, which add each\n"
                 "gradient into its parameter's .grad.",
        "s4": "4. backward() and one step of SGD (lr = {lr})",
        "before": "Before backward() every .grad is {state}. After loss.backward() and optimizer.step():",
        "col_parameter": "parameter", "col_update": "|update|",
        "moved": "Each weight moved by lr x its gradient: W_after = W_before - {lr} * grad\n"
                 "(largest difference {worst}, float32 rounding): {verdict}.",
        "ok": "OK", "mismatch": "MISMATCH",
        "largest_update": "The largest update is {percent}% of its tensor's norm: learning takes many such steps.",
        "s5": "5. Checking autograd with finite differences ({dtype} copy, eps = {eps})",
        "numerical": "numerical gradient = (loss(w + eps) - loss(w - eps)) / (2 eps), one weight at a time:",
        "col_entry": "entry", "col_numerical": "numerical", "col_rel": "rel. error",
        "fd_ok": "Largest relative error {error}: backward() computes the same derivatives as nudging each weight.",
        "fd_none": "No entry away from a kink was found; try another seed.",
        "kinks": "({kinks} other entries were skipped: a ReLU or max-pool switches within eps of them, "
                 "a kink where no finite difference is meaningful.)",
        "s6": "6. Forgetting zero_grad(): gradients accumulate",
        "adds": "backward() adds into .grad; it does not overwrite it. The same batch, twice:",
        "after_one": "  after one backward():                       |grad| = {norm}",
        "after_two": "  after a second backward(), no zero_grad():  |grad| = {norm} (x{ratio})",
        "minus": "  .grad minus (first + second gradient): max abs difference {diff}",
        "after_zero": "  after optimizer.zero_grad(): every .grad is {state}",
        "so": "So a training loop calls optimizer.zero_grad() before each backward(); otherwise each step\n"
              "would use the sum of all gradients so far.",
        "s7": "7. torch.no_grad(): outputs without a graph",
        "outside": "  model(images).requires_grad = {flag} (grad_fn {node})",
        "inside": "  inside torch.no_grad(): requires_grad = {flag} (grad_fn {node})",
        "weights_still": "  the weights still have requires_grad = {flag}",
        "no_grad": "no_grad only stops recording the graph; nothing is frozen. Use it to evaluate and predict:\n"
                   "it saves the memory and time the graph would cost.",
    },
    "fr": {
        "fresh": "d'un {name} neuf (non entraîné, initialisé avec la graine {seed})",
        "checkpoint": "du modèle {name}",
        "title": "Un pas d'entraînement {source}, décortiqué.",
        "s1": "1. Le réseau",
        "params": "Paramètres (les tenseurs que l'optimiseur modifie) :",
        "total": "total",
        "s2": "2. Un lot et sa perte",
        "batch": "{n} images d'entraînement de {dataset} tirées au hasard (graine {seed}) ; "
                 "forme du tenseur {shape}.",
        "normalised": "Les pixels sont normalisés par (x/255 - {mean}) / {std}.",
        "labels": "Images de chaque classe dans le lot :",
        "class": "classe",
        "images": "images",
        "chance": "(Donner la même probabilité à chaque classe donne ln {k} = {chance}",
        "chance_fresh": " ; un réseau non entraîné part de là.)",
        "s3": "3. La chaîne des grad_fn",
        "remembers": "La perte garde la trace de son calcul : loss.grad_fn vaut {node}.",
        "following": "En suivant .next_functions de la perte jusqu'à la première couche :",
        "grad_of": " -> .grad de {name}",
        "via": " (par {path})",
        "feeds": "alimente aussi {side}",
        "walks": "backward() parcourt ce graphe de la perte jusqu'aux nœuds AccumulateGrad, qui ajoutent\n"
                 "chaque gradient dans le .grad de son paramètre.",
        "s4": "4. backward() et un pas de SGD (lr = {lr})",
        "before": "Avant backward(), chaque .grad vaut {state}. Après loss.backward() et optimizer.step() :",
        "col_parameter": "paramètre", "col_update": "|dW|",
        "moved": "Chaque poids a bougé de lr x son gradient : W_après = W_avant - {lr} * grad\n"
                 "(plus grand écart {worst}, arrondi float32) : {verdict}.",
        "ok": "OK", "mismatch": "DÉSACCORD",
        "largest_update": "La plus grande mise à jour vaut {percent} % de la norme de son tenseur : "
                          "apprendre demande beaucoup de tels pas.",
        "s5": "5. Vérifier autograd par différences finies (copie en {dtype}, eps = {eps})",
        "numerical": "gradient numérique = (loss(w + eps) - loss(w - eps)) / (2 eps), un poids à la fois :",
        "col_entry": "entrée", "col_numerical": "numérique", "col_rel": "écart rel.",
        "fd_ok": "Plus grand écart relatif {error} : backward() calcule les mêmes dérivées qu'en poussant "
                 "chaque poids.",
        "fd_none": "Aucune entrée loin d'un coude n'a été trouvée ; essayez une autre graine.",
        "kinks": "({kinks} autres entrées ont été écartées : une ReLU ou un max-pool y bascule à moins de eps, "
                 "un coude où aucune différence finie n'a de sens.)",
        "s6": "6. Oublier zero_grad() : les gradients s'accumulent",
        "adds": "backward() ajoute dans .grad, sans l'écraser. Le même lot, deux fois :",
        "after_one": "  après un backward() :                        |grad| = {norm}",
        "after_two": "  après un second backward(), sans zero_grad() : |grad| = {norm} (x{ratio})",
        "minus": "  .grad moins (premier + second gradient) : plus grand écart absolu {diff}",
        "after_zero": "  après optimizer.zero_grad() : chaque .grad vaut {state}",
        "so": "Une boucle d'entraînement appelle donc optimizer.zero_grad() avant chaque backward() ; sinon\n"
              "chaque pas utiliserait la somme de tous les gradients précédents.",
        "s7": "7. torch.no_grad() : des sorties sans graphe",
        "outside": "  model(images).requires_grad = {flag} (grad_fn {node})",
        "inside": "  dans torch.no_grad() : requires_grad = {flag} (grad_fn {node})",
        "weights_still": "  les poids ont toujours requires_grad = {flag}",
        "no_grad": "no_grad arrête seulement l'enregistrement du graphe ; rien n'est gelé. On s'en sert pour\n"
                   "évaluer et prédire : on économise la mémoire et le temps que le graphe coûterait.",
    },
}

# The states a .grad can be in, as inspect_step records them, said in each language.
GRAD_STATES = {
    "en": {"None": "None", "set": "set", "zero": "zero", "non-zero": "non-zero"},
    "fr": {"None": "None", "set": "déjà rempli", "zero": "nul (des zéros)", "non-zero": "non nul"},
}


def language_from_environment(environ: dict[str, str] | None = None) -> str:
    """'fr' when the locale's language is French, else 'en'.

    The first of LC_ALL, LC_MESSAGES and LANG that is set decides, as POSIX orders them.
    """
    environ = os.environ if environ is None else environ
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(name, "")
        if value:
            return "fr" if value.lower().startswith("fr") else "en"
    return "en"


def _shape(shape: list[int]) -> str:
    return " x ".join(map(str, shape)) or "scalar"


def _count_table(counts: dict[str, int], class_word: str, count_word: str) -> list[str]:
    """Two aligned rows, the class names above the number of images of each (a count never reads as a label)."""
    widths = [max(len(name), len(str(n))) for name, n in counts.items()]
    label = max(len(class_word), len(count_word))
    return [f"  {class_word:<{label}}  " + "  ".join(f"{name:>{w}}" for name, w in zip(counts, widths)),
            f"  {count_word:<{label}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(counts.values(), widths))]


def format_report(result: dict[str, Any], lang: str = "en") -> str:
    """The result of `inspect_step` as numbered sections a student can read top to bottom.

    `lang` is 'en' or 'fr': the explanations change, every number is the same.
    """
    if lang not in LANGUAGES:
        raise UsageError(f"unknown language {lang!r}; choose {' or '.join(LANGUAGES)}")
    t, states = LANGUAGES[lang], GRAD_STATES[lang]
    m, b, lr = result["model"], result["batch"], result["lr"]
    params, fd, acc, ng = result["parameters"], result["finite_differences"], result["accumulation"], \
        result["no_grad"]
    width = max(len(p["name"]) for p in params) + 2
    entry = max((len(str(e["index"])) for e in fd["entries"]), default=5) + 2
    if "name" not in m:  # a result saved by an older mnistlab
        source = m["source"]
    elif m["trained"]:
        source = t["checkpoint"].format(name=m["name"])
    else:
        source = t["fresh"].format(name=m["name"], seed=m["init_seed"])
    lines = [t["title"].format(source=source), ""]

    lines += [t["s1"], m["text"], t["params"]]
    for p in m["parameters"]:
        lines.append(f"  {p['name']:<{width}}{_shape(p['shape']):>14}  {p['count']:>10,}")
    lines += [f"  {t['total']:<{width}}{'':>14}  {m['total_parameters']:>10,}", ""]

    lines += [
        t["s2"],
        t["batch"].format(n=b["shape"][0], dataset=b["dataset"], seed=b["seed"], shape=_shape(b["shape"])),
        t["normalised"].format(mean=f"{b['mean']:g}", std=f"{b['std']:g}"),
        t["labels"],
        *_count_table(b["label_counts"], t["class"], t["images"]),
        f"loss = {m['loss_function']}(model(images), labels) = {result['loss']:.4f}",
        t["chance"].format(k=len(b["label_counts"]), chance=f"{result['chance_loss']:.4f}")
        + (t["chance_fresh"] if not m["trained"] else ".)"),
        "",
    ]

    lines += [t["s3"], t["remembers"].format(node=result["grad_fn_chain"][0]["node"]), t["following"]]
    for step in result["grad_fn_chain"]:
        here = t["grad_of"].format(name=step["parameter"]) if step["parameter"] else ""
        side = ", ".join(f"{br['parameter']}" + (t["via"].format(path=" -> ".join(br["path"][:-1]))
                                                   if len(br["path"]) > 1 else "") for br in step["branches"])
        lines.append((f"  {step['node'] + here:<34}" + (t["feeds"].format(side=side) if side else "")).rstrip())
    lines += [t["walks"], ""]

    lines += [t["s4"].format(lr=f"{lr:g}"),
              t["before"].format(state=states[result["grads_before_backward"]]),
              f"  {t['col_parameter']:<{width}}{'|W|':>10}{'|grad|':>11}{t['col_update']:>11}{'lr x |grad|':>13}"
              f"{'max |dW - lr*grad|':>20}"]
    for p in params:
        lines.append(f"  {p['name']:<{width}}{p['norm']:>10.4f}{p['grad_norm']:>11.4g}{p['update_norm']:>11.4g}"
                     f"{p['lr_times_grad_norm']:>13.4g}{p['max_abs_diff_update_vs_lr_grad']:>20.2g}")
    worst = max(p["max_abs_diff_update_vs_lr_grad"] for p in params)
    ok = all(p["update_is_lr_times_grad"] for p in params)
    step = max(p["update_norm"] / p["norm"] for p in params if p["norm"] > 0)
    lines += [t["moved"].format(lr=f"{lr:g}", worst=f"{worst:.2g}", verdict=t["ok"] if ok else t["mismatch"]),
              t["largest_update"].format(percent=f"{100 * step:.2g}"), ""]

    lines += [t["s5"].format(dtype=fd["dtype"], eps=f"{fd['eps']:g}"), t["numerical"],
              f"  {t['col_parameter']:<{width}}{t['col_entry']:<{entry}}{'autograd':>14}{t['col_numerical']:>14}"
              f"{t['col_rel']:>12}"]
    for e in fd["entries"]:
        lines.append(f"  {e['parameter']:<{width}}{str(e['index']):<{entry}}{e['autograd']:>14.6e}"
                     f"{e['numerical']:>14.6e}{e['relative_error']:>12.1e}")
    lines.append(t["fd_ok"].format(error=f"{fd['max_relative_error']:.1e}") if fd["entries"] else t["fd_none"])
    if fd["kinks_skipped"]:
        lines.append(t["kinks"].format(kinks=fd["kinks_skipped"]))
    lines.append("")

    lines += [t["s6"], t["adds"],
              t["after_one"].format(norm=f"{acc['first_grad_norm']:.6g}"),
              t["after_two"].format(norm=f"{acc['accumulated_grad_norm']:.6g}", ratio=f"{acc['ratio']:.3f}"),
              t["minus"].format(diff=f"{acc['max_abs_diff_from_sum']:.2g}"),
              t["after_zero"].format(state=states[acc["grads_after_zero_grad"]]),
              t["so"], ""]

    lines += [t["s7"],
              t["outside"].format(flag=ng["outside"]["requires_grad"], node=ng["outside"]["grad_fn"]),
              t["inside"].format(flag=ng["inside"]["requires_grad"], node=ng["inside"]["grad_fn"]),
              t["weights_still"].format(flag=ng["weights_require_grad"]),
              t["no_grad"]]
    return "\n".join(lines)
