#!/usr/bin/env python
"""Do the synthetic ground truths differ as intended? A linear probe on frozen penultimate features.

    python scripts/probe_groundtruth.py --out /tmp/probe [--seeds 0 1 2] [--n-probe 10 100]

Per seed: write the three ground truths (`ptft-data synthetic --ground-truth subset|new|dense`, CIFAR-100
format, FT classes 98 and 99). Their PT classes' images are identical (checked here), so ONE pretraining
(`ptft-pretrain` of this source tree, run as `ptft.pipeline.main.pretrain_main`, on the `subset` root with
`data.ft_class_list=[98,99]`, resnet18_cifar) serves all three.
Then, for each ground truth, a logistic-regression probe (L2, LBFGS, standardised features) is fitted on
n balanced FT training images and scored on all FT test images, on the features of
- `pretrained`: the pretrained network without its head (eval mode),
- `random`: the same architecture at its random init (BatchNorm statistics computed on the PT train
  images, so the features are not degenerate),
- `pixels`: the raw normalised pixels.
Each n is drawn `--draws` times. Writes `probe.csv` (one row per seed, ground truth, features, n, draw)
and prints a table (mean and sd over seeds of the per-seed mean over draws).
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from ptft.vision.data import load_split, normalize  # noqa: E402
from ptft.vision.models import build_model  # noqa: E402
from ptft.vision.synthetic import generate, read_marker  # noqa: E402

KINDS = ("subset", "new", "dense")


def pretrain(root: Path, store: Path, ft: list[int], seed: int, args: argparse.Namespace) -> Path:
    # `ptft-pretrain` of THIS source tree (the installed console script may belong to another checkout)
    cmd = [sys.executable, "-c", "import sys; from ptft.pipeline.main import pretrain_main; sys.exit(pretrain_main())",
           "data=cifar100", f"data.root={root}",
           f"data.ft_class_list=[{','.join(map(str, ft))}]", "model=resnet18_cifar",
           f"model.width={args.width}", f"pretrain.train.lr={args.lr}", f"pretrain.train.max_epochs={args.epochs}",
           f"pretrain.seed={seed}", "runtime.device=cpu", f"store.root={store}", "wandb.mode=disabled",
           f"hydra.run.dir={store}/hydra/{seed}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), "PTFT_CONF_DIR": str(REPO / "conf")}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    return Path(p.stdout.strip().splitlines()[-1])


@torch.no_grad()
def features(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([net(normalize(x[i:i + 500])) for i in range(0, len(x), 500)])


def fit_probe(f: torch.Tensor, y: torch.Tensor, l2: float) -> torch.nn.Linear:
    lin = torch.nn.Linear(f.shape[1], int(y.max()) + 1).double()
    torch.nn.init.zeros_(lin.weight), torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(f), y) + l2 * lin.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def probe_acc(ftr: torch.Tensor, ytr: torch.Tensor, fte: torch.Tensor, yte: torch.Tensor, l2: float) -> float:
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    lin = fit_probe(((ftr - mu) / sd).double(), ytr, l2)
    with torch.no_grad():
        return (lin(((fte - mu) / sd).double()).argmax(1) == yte).double().mean().item()


def balanced_draw(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    k = int(y.max()) + 1
    return np.concatenate([rng.permutation(np.flatnonzero(y == c))[: n // k] for c in range(k)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-probe", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--n-train-per-class", type=int, default=50)
    ap.add_argument("--n-test-per-class", type=int, default=100)
    ap.add_argument("--distractors", type=int, default=1)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--l2", type=float, default=1e-3, help="probe's L2 penalty on standardised features")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        roots = {}
        for kind in KINDS:
            roots[kind] = args.out / "data" / f"{kind}_{seed}"
            if not (roots[kind] / "PTFT_SYNTHETIC.json").exists():
                generate(roots[kind], "cifar100", args.n_train_per_class, args.n_test_per_class, seed=seed,
                         distractors=args.distractors, ground_truth=kind)
        ft = read_marker(roots["subset"])["formats"]["cifar100"]["ft_class_list"]
        x0, y0 = load_split("cifar100", str(roots["subset"]), True)
        for kind in KINDS[1:]:  # one pretraining serves the three: their PT images are identical
            x, y = load_split("cifar100", str(roots[kind]), True)
            pt = ~torch.isin(y0, torch.tensor(ft))
            assert torch.equal(y, y0) and torch.equal(x[pt], x0[pt]), f"PT images of {kind} differ"
        run = pretrain(roots["subset"], args.out / "runs", ft, seed, args)
        pt_acc = __import__("json").loads((run / "result.json").read_text())["test_acc"]
        print(f"seed {seed}: pretrained {run.name}, PT test accuracy {pt_acc:.3f}", flush=True)
        nets = {}
        nets["pretrained"] = build_model("resnet18_cifar", 100, args.width)
        nets["pretrained"].load_state_dict(torch.load(run / "model.pt", weights_only=True))
        torch.manual_seed(seed)
        nets["random"] = build_model("resnet18_cifar", 100, args.width)
        for m in nets["random"].modules():  # BN statistics of the random net from the PT images
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats(), setattr(m, "momentum", None)
        with torch.no_grad():
            nets["random"].train()(normalize(x0[pt][:2000]))
        for net in nets.values():
            net.fc = torch.nn.Identity()
            net.eval()
        for kind in KINDS:
            xtr, ytr = load_split("cifar100", str(roots[kind]), True)
            xte, yte = load_split("cifar100", str(roots[kind]), False)
            tr, te = torch.isin(ytr, torch.tensor(ft)), torch.isin(yte, torch.tensor(ft))
            xtr, ytr, xte, yte = xtr[tr], (ytr[tr] == ft[1]).long(), xte[te], (yte[te] == ft[1]).long()
            feats = {name: (features(net, xtr), features(net, xte)) for name, net in nets.items()}
            feats["pixels"] = (normalize(xtr).flatten(1), normalize(xte).flatten(1))
            for name, (ftr, fte) in feats.items():
                for n in args.n_probe:
                    rng = np.random.default_rng([seed, n])
                    for d in range(args.draws):
                        idx = torch.from_numpy(balanced_draw(ytr.numpy(), n, rng))
                        acc = probe_acc(ftr[idx], ytr[idx], fte, yte, args.l2)
                        rows.append(dict(seed=seed, ground_truth=kind, features=name, n=n, draw=d,
                                         acc=round(acc, 4), pt_test_acc=round(pt_acc, 4)))
            print(f"  {kind}: " + ", ".join(
                f"{name} n={n} {np.mean([r['acc'] for r in rows if r['seed'] == seed and r['ground_truth'] == kind and r['features'] == name and r['n'] == n]):.3f}"
                for name in feats for n in args.n_probe), flush=True)
    with open(args.out / "probe.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader(), w.writerows(rows)
    print(f"\nFT test accuracy of a linear probe (chance 0.5), mean +- sd over seeds {args.seeds} "
          f"of the mean over {args.draws} draws of n balanced FT images")
    print("| ground truth | n | pretrained | random init | pixels |\n|---|---|---|---|---|")
    for kind in KINDS:
        for n in args.n_probe:
            cells = []
            for name in ("pretrained", "random", "pixels"):
                per_seed = [np.mean([r["acc"] for r in rows if r["seed"] == s and r["ground_truth"] == kind
                                     and r["features"] == name and r["n"] == n]) for s in args.seeds]
                cells.append(f"{np.mean(per_seed):.3f} +- {np.std(per_seed, ddof=1) if len(per_seed) > 1 else 0:.3f}")
            print(f"| {kind} | {n} | " + " | ".join(cells) + " |")
    print(f"wrote {args.out / 'probe.csv'}")


if __name__ == "__main__":
    main()
