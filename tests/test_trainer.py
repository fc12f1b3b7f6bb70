"""The shared trainer on small synthetic tasks: stopping rules, batching, checkpoint/resume, signals."""
import math
import os
import signal

import pytest
import torch

from ptft import ConfigError
from ptft.train.store import read_checkpoint
from ptft.train.trainer import Preempted, TrainConfig, Trainer


class LinReg:
    """B independent least-squares problems trained by minibatches (or full batch)."""

    def __init__(self, B=3, n=64, d=5, batch=16, full_batch=False, seed=0, scale=None):
        g = torch.Generator().manual_seed(seed)
        self.X = torch.randn(B, n, d, generator=g, dtype=torch.float64)
        self.y = torch.einsum("bnd,bd->bn", self.X, torch.randn(B, d, generator=g, dtype=torch.float64))
        if scale is not None:  # per-member input scale (a large one makes that member diverge)
            self.X = self.X * torch.tensor(scale, dtype=torch.float64).view(-1, 1, 1)
            self.y = self.y * torch.tensor(scale, dtype=torch.float64).view(-1, 1)
        self.w = torch.zeros(B, d, dtype=torch.float64, requires_grad=True)
        self.n_members, self.n, self.batch, self.full_batch, self.seed = B, n, batch, full_batch, seed
        self.hook = None

    def parameters(self):
        return [self.w]

    def batches(self, epoch):
        if self.full_batch:
            yield torch.arange(self.n)
            return
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        for i in range(0, self.n, self.batch):
            if self.hook:
                self.hook()
            yield perm[i:i + self.batch]

    def loss(self, idx):
        r = torch.einsum("bnd,bd->bn", self.X[:, idx], self.w) - self.y[:, idx]
        return (r * r).mean(1)

    def evaluate(self):
        with torch.no_grad():
            return {"mse": self.loss(torch.arange(self.n))}

    def state_dict(self):
        return {"w": self.w.detach().clone()}

    def load_state_dict(self, s):
        with torch.no_grad():
            self.w.copy_(s["w"])


CFG = dict(lr=0.05, momentum=0.9, threshold=1e-8, max_epochs=400, ckpt_every_s=0)


def test_minibatch_members_converge_each_with_its_own_stop():
    task = LinReg()
    out = Trainer(task, TrainConfig(**CFG)).run()
    assert out["status"] == ["converged"] * 3
    assert max(out["train_loss"]) < 1e-8
    assert len(set(out["steps"])) > 1  # stopped at different steps


def test_stopped_member_never_changes_again():
    task = LinReg(full_batch=True)
    tr = Trainer(task, TrainConfig(lr=0.05, momentum=0.9, threshold=1e-6, max_steps=100000))
    snapshots = {}
    orig = tr._finish_member

    def spy(mask, status):
        orig(mask, status)
        for b in range(3):
            if not tr.active[b] and b not in snapshots:
                snapshots[b] = task.w[b].detach().clone()

    tr._finish_member = spy
    out = tr.run()
    assert out["status"] == ["converged"] * 3
    for b, w in snapshots.items():
        assert torch.equal(task.w[b].detach(), w)  # exactly frozen from the moment it stopped


def test_nan_loss_marks_only_that_member_diverged():
    task = LinReg(full_batch=True, scale=[1.0, 1e3, 1.0])
    out = Trainer(task, TrainConfig(lr=0.05, threshold=1e-8, max_steps=20000)).run()
    assert out["status"][1] == "diverged"
    assert out["status"][0] == out["status"][2] == "converged"


def test_budgets_end_with_their_own_status():
    out = Trainer(LinReg(), TrainConfig(lr=1e-4, threshold=1e-12, max_epochs=3)).run()
    assert out["status"] == ["max_epochs"] * 3 and out["epochs"] == 3
    out = Trainer(LinReg(), TrainConfig(lr=1e-4, threshold=1e-12, max_steps=7)).run()
    assert out["status"] == ["max_steps"] * 3 and out["steps"] == [7, 7, 7]


def test_mid_epoch_checkpoint_resume_is_bit_identical(tmp_path):
    ref = LinReg()
    ref_out = Trainer(ref, TrainConfig(**CFG)).run()

    task, ck = LinReg(), tmp_path / "ck.pt"
    calls = {"n": 0}

    def stop_mid_epoch():  # a signal in the middle of epoch 3 (batch 2 of 4)
        calls["n"] += 1
        if calls["n"] == 3 * 4 + 3:
            os.kill(os.getpid(), signal.SIGUSR1)

    task.hook = stop_mid_epoch
    with pytest.raises(Preempted):
        Trainer(task, TrainConfig(**CFG), checkpoint=ck).run()
    st = read_checkpoint(ck)
    assert st["epoch"] == 3 and 0 < st["n_batches"] < 4

    resumed = LinReg()
    tr = Trainer(resumed, TrainConfig(**CFG), checkpoint=ck)
    assert tr.try_resume()
    out = tr.run()
    assert out == ref_out
    assert torch.equal(resumed.w, ref.w)


def test_signal_handler_is_restored_and_previous_handler_called(tmp_path):
    seen = []

    def ours(s, f):
        seen.append(s)

    prev = signal.signal(signal.SIGUSR1, ours)
    try:
        task = LinReg()
        fired = {"n": 0}

        def once():
            fired["n"] += 1
            if fired["n"] == 5:
                os.kill(os.getpid(), signal.SIGUSR1)

        task.hook = once
        out = Trainer(task, TrainConfig(**CFG), checkpoint=tmp_path / "c.pt").run()
        assert seen == [signal.SIGUSR1]  # e.g. submitit's handler still gets the signal
        assert (tmp_path / "c.pt").exists() and out["status"] == ["converged"] * 3
        assert signal.getsignal(signal.SIGUSR1) is ours  # the trainer put the previous handler back
    finally:
        signal.signal(signal.SIGUSR1, prev)


@pytest.mark.parametrize("kw,key", [(dict(lr=0), "train.lr"), (dict(momentum=1.0), "train.momentum"),
                                    (dict(threshold=-1), "train.threshold"), (dict(max_steps=0), "train.max_steps"),
                                    (dict(max_steps=None, max_epochs=None), "budget")])
def test_bad_train_config(kw, key):
    base = dict(lr=0.1, max_steps=10)
    base.update(kw)
    with pytest.raises(ConfigError, match=key):
        Trainer(LinReg(), TrainConfig(**base))


def test_torch_optim_sgd_is_bit_identical_to_the_former_fused_update():
    """The trainer's single-model step moved to torch.optim.SGD (foreach); vision results must not change:
    the parameters after several momentum steps equal, bit for bit, those of the hand-written fused update
    it replaced (buf = momentum * buf + g; p -= lr * buf)."""
    import torch.nn.functional as F

    from ptft.train.trainer import OptimTrainConfig, make_optimizer
    from ptft.vision.models import build_model

    torch.manual_seed(0)
    x, y = torch.randn(24, 3, 32, 32), torch.randint(0, 3, (24,))
    nets = [build_model("resnet18_cifar", 3, 4) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opt, _ = make_optimizer(list(nets[0].parameters()), OptimTrainConfig(lr=0.05, momentum=0.9, max_steps=1))
    params = list(nets[1].parameters())
    bufs = [torch.zeros_like(p) for p in params]
    for step in range(6):
        idx = torch.arange(step * 4, step * 4 + 8) % 24
        for net in nets:
            F.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # the former Trainer._update for one member
            grads = [p.grad for p in params]
            torch._foreach_mul_(bufs, 0.9)
            torch._foreach_add_(bufs, grads)
            torch._foreach_add_(params, bufs, alpha=-0.05)
        for p in params:
            p.grad = None
    a, b = nets[0].state_dict(), nets[1].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adamw_warmup_and_weight_decay_follow_torch_optim():
    from ptft.train.trainer import OptimTrainConfig, make_optimizer

    p = torch.nn.Parameter(torch.ones(3))
    opt, sched = make_optimizer([p], OptimTrainConfig(optimizer="adamw", lr=0.1, momentum=0.0, weight_decay=1.0,
                                                      betas=[0.9, 0.98], warmup_steps=4, max_steps=1))
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        p.grad = torch.zeros(3)
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    # zero gradients: AdamW only decays, p <- p (1 - lr wd) each step
    assert torch.allclose(p.detach(), torch.full((3,), float(math.prod(1 - lr for lr in lrs))))
