"""Tests for volscore.train: exact resume, run folder, safety checks, learning-rate schedule, fine-tuning
(``--init``); the checkpoint file itself is tested in test_checkpoint.py."""

from __future__ import annotations

import json
import math

import pytest
import torch

from volscore.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from volscore.config import TrainConfig
from volscore.train import Trainer, training_loss


def _cfg(out, steps, **kw) -> TrainConfig:
    base = dict(
        data=["mnist"],
        out=str(out),
        preset="tiny",
        steps=steps,
        batch_size=4,
        sigma_max=10.0,
        num_sigmas=20,
        log_every=2,
        ckpt_every=100,
        warmup=2,
        amp="off",
        lr=1e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.reliability
@pytest.mark.parametrize("objective", ["dsm", "ssm-vr"])
def test_resumed_run_continues_exactly(tmp_path, objective):
    straight = Trainer(_cfg(tmp_path / "a", 6, objective=objective), progress=False)
    straight.run()
    first = Trainer(_cfg(tmp_path / "b", 3, objective=objective), progress=False)
    first.run()
    resumed = Trainer(_cfg(tmp_path / "b", 6, objective=objective), resume=True, progress=False)
    assert resumed.step == 3
    resumed.run()
    for name, ref in (("model", straight.model), ("ema", straight.ema)):
        other = resumed.model if name == "model" else resumed.ema
        for k, v in _params(ref).items():
            assert torch.equal(v, _params(other)[k]), f"{name}.{k} differs after resume"
    rows = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4", "6"]


@pytest.mark.reliability
def test_run_directory_contents_and_refusal_to_overwrite(tmp_path):
    t = Trainer(_cfg(tmp_path / "r", 4), progress=False)
    t.run()
    for name in ("config.json", "checkpoint.pt", "metrics.csv", "loss.png"):
        assert (tmp_path / "r" / name).is_file(), name
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and set(state) >= {"model", "ema", "optimizer", "scaler", "rng", "model_args"}
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(_cfg(tmp_path / "r", 4), progress=False)


@pytest.mark.reliability
def test_checkpoint_for_another_preset_is_refused(tmp_path):
    Trainer(_cfg(tmp_path / "r", 1), progress=False).run()
    state = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    state["config"]["preset"] = "small"  # the saved config now rebuilds another model than the weights
    save_checkpoint(tmp_path / "r" / "checkpoint.pt", state)
    with pytest.raises(CheckpointError, match="different model.*channels"):
        Trainer(_cfg(tmp_path / "r", 2), resume=True, progress=False)


@pytest.mark.reliability
def test_minutes_budget_stops_with_a_checkpoint(tmp_path):
    t = Trainer(_cfg(tmp_path / "m", None, minutes=0.02), progress=False)
    t.run()
    assert t.step >= 1 and load_checkpoint(tmp_path / "m" / "checkpoint.pt")["step"] == t.step


@pytest.mark.reliability
def test_non_finite_losses_are_skipped_then_stop(tmp_path, monkeypatch):
    t = Trainer(_cfg(tmp_path / "n", 50, max_skipped=3), progress=False)
    monkeypatch.setattr("volscore.train.training_loss", lambda *a, **k: torch.full((4,), float("nan")))
    with pytest.raises(FloatingPointError, match="non-finite"):
        t.run()
    assert t.skipped == 4


def test_training_loss_shapes_for_every_objective_2d_and_3d():
    from volscore.nets import build_model

    g = torch.Generator().manual_seed(0)
    for dims, shape, coords in ((2, (3, 1, 12, 12), None), (3, (2, 1, 8, 8, 8), torch.zeros(2, 3, 8, 8, 8))):
        model = build_model("tiny", dims, coord_channels=coords is not None)
        x = torch.rand(shape, generator=g)
        sigma = torch.tensor([0.1, 1.0, 5.0][: shape[0]])
        for objective in ("dsm", "ssm", "ssm-vr", "ssm-fd"):
            loss = training_loss(model, objective, x, coords, sigma, g)
            assert loss.shape == (shape[0],) and torch.isfinite(loss).all()
            loss.mean().backward()


def test_ema_warmup_follows_the_model_early_and_averages_late():
    from volscore.train import ema_with_warmup

    update = ema_with_warmup(0.999)
    ema, new = [torch.zeros(3)], [torch.ones(3)]
    update(ema, new, 1)  # decay (1 + 1) / (10 + 1): mostly the new weights
    assert torch.allclose(ema[0], torch.full((3,), 1 - 2 / 11))
    ema = [torch.zeros(3)]
    update(ema, new, 10**6)  # late: the full decay
    assert torch.allclose(ema[0], torch.full((3,), 1 - 0.999))


@pytest.mark.reliability
@pytest.mark.slow
@pytest.mark.parametrize("objective", ["dsm", "ssm-vr"])
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path, objective):
    """torchrun with 2 CPU processes (gloo) vs 1 process drawing the same 2 shards in turn.

    Tolerance: 1e-6 absolute on every weight (float32 all-reduce order; observed exactly equal).
    """
    import os
    import subprocess
    import sys

    common = [
        "train",
        "--data",
        "mnist",
        "--steps",
        "3",
        "--preset",
        "tiny",
        "--batch-size",
        "2",
        "--objective",
        objective,
        "--sigma-max",
        "5",
        "--num-sigmas",
        "4",
        "--amp",
        "bf16",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "volscore",
        *common,
        "--out",
        str(tmp_path / "ddp"),
    ]
    subprocess.run(ddp, check=True, env=env, capture_output=True, timeout=300)
    one = [sys.executable, "-m", "volscore", *common, "--out", str(tmp_path / "one"), "--data-shards", "2"]
    subprocess.run(one, check=True, env=env, capture_output=True, timeout=300)
    a = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 3 and sorted(a["rng"]["generators"]) == [0, 1]
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), rtol=0, atol=1e-6), k


def test_identical_training_samples_give_a_clear_error(tmp_path):
    import nibabel as nib
    import numpy as np

    vol = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    cfg = _cfg(tmp_path / "r", 1, data=[str(tmp_path / "v.nii.gz")], patch_size=8, sigma_max=None)
    with pytest.raises(ValueError, match="--sigma-max"):
        Trainer(cfg, progress=False)


@pytest.mark.reliability
def test_resume_removes_temporaries_left_by_a_killed_save(tmp_path):
    Trainer(_cfg(tmp_path / "k", 2), progress=False).run()
    stale = tmp_path / "k" / ".checkpoint.abc123.tmp.pt"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / "k" / ".metrics.abc.tmp.csv"  # not a checkpoint temporary: left alone
    other.write_bytes(b"x")
    Trainer(_cfg(tmp_path / "k", 3), resume=True, progress=False).run()
    assert not stale.exists() and other.exists()


def _max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pa, pb = _params(a), _params(b)
    return max(float((pa[k].float() - pb[k].float()).abs().max()) for k in pa)


def _channels_last(model: torch.nn.Module) -> bool:
    """Whether the weights of the convolutions that read several channels are stored channels-last."""
    weights = [p for p in model.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[-1] > 1]
    assert weights
    return all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in weights)


def test_channels_last_trains_like_the_default_layout(tmp_path):
    plain = Trainer(_cfg(tmp_path / "p", 3), progress=False)
    plain.run()
    last = Trainer(_cfg(tmp_path / "c", 3, channels_last=True), progress=False)
    assert _channels_last(last.model) and _channels_last(last.ema.module)
    last.run()
    # Same maths in another memory order: only the summation order of the convolutions differs.
    assert _max_param_diff(plain.model, last.model) < 1e-4
    # The checkpoint loads into an ordinary model: the layout is a runtime choice, not part of the run.
    resumed = Trainer(_cfg(tmp_path / "c", 4), resume=True, progress=False)
    assert not _channels_last(resumed.model)
    resumed.run()


def test_compile_is_refused_for_double_backward_objectives(tmp_path):
    for objective in ("ssm", "ssm-vr"):
        with pytest.raises(ValueError, match="double backward"):
            Trainer(_cfg(tmp_path / objective, 2, objective=objective, compile=True), progress=False)
    assert not (tmp_path / "ssm-vr").exists()


@pytest.mark.slow
def test_compiled_dsm_trains_like_eager(tmp_path):
    # One compilation of the tiny model takes about a minute of CPU.
    eager = Trainer(_cfg(tmp_path / "e", 3), progress=False)
    eager.run()
    compiled = Trainer(_cfg(tmp_path / "k", 3, compile=True), progress=False)
    compiled.run()
    assert _max_param_diff(eager.model, compiled.model) < 1e-4  # fused kernels reorder float sums
    state = torch.load(tmp_path / "k" / "checkpoint.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in state["model"])  # plain keys: loadable anywhere


# -- learning rate, batch size ----------------------------------------------------------------------------
def test_learning_rate_warms_up_linearly_then_stays_or_decays_by_cosine():
    from volscore.train import learning_rate

    constant = _cfg("r", 110, lr=1e-3, warmup=10)
    assert [learning_rate(constant, s) for s in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])
    assert learning_rate(constant, 10) == learning_rate(constant, 500) == pytest.approx(1e-3)
    cosine = _cfg("r", 110, lr=1e-3, warmup=10, lr_schedule="cosine")
    assert [learning_rate(cosine, s) for s in (0, 9)] == pytest.approx([1e-4, 1e-3])  # the same warm-up
    assert learning_rate(cosine, 10) == pytest.approx(1e-3)  # then from the peak ...
    assert learning_rate(cosine, 60) == pytest.approx(0.5e-3)  # ... half way down at half the decay
    assert learning_rate(cosine, 35) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert learning_rate(cosine, 110) == pytest.approx(0, abs=1e-15) == learning_rate(cosine, 200)
    assert learning_rate(_cfg("r", 5, lr=2e-3, warmup=0), 0) == pytest.approx(2e-3)  # no warm-up


def test_trainer_sets_the_scheduled_learning_rate_each_step(tmp_path):
    from volscore.train import learning_rate

    cfg = _cfg(tmp_path / "lr", 4, warmup=2, log_every=1, lr_schedule="cosine")
    Trainer(cfg, progress=False).run()
    rows = (tmp_path / "lr" / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("lr")
    logged = [float(r.split(",")[column]) for r in rows[1:]]
    assert logged == pytest.approx([learning_rate(cfg, s) for s in range(4)])
    assert logged == pytest.approx([0.5e-3, 1e-3, 1e-3, 0.5e-3])  # warm-up 2 steps, cosine over the other 2


def test_default_batch_size_by_dimension(tmp_path):
    from volscore.train import default_batch_size

    assert (default_batch_size(2), default_batch_size(3)) == (64, 4)
    with Trainer(_cfg(tmp_path / "b", 1, batch_size=None), progress=False) as t:
        assert t.cfg.batch_size == 64  # resolved from the MNIST source and saved with the run
    assert json.loads((tmp_path / "b" / "config.json").read_text())["config"]["batch_size"] == 64


# -- resume, fine-tuning, run folder -----------------------------------------------------------------------
@pytest.mark.reliability
def test_resume_refuses_a_changed_preset_that_was_asked_for(tmp_path):
    Trainer(_cfg(tmp_path / "r", 1), progress=False).run()
    with pytest.raises(ValueError, match=r"would change: preset: 'tiny' -> 'small'.*--init RUN"):
        Trainer(_cfg(tmp_path / "r", 2, preset="small"), resume=True, asked={"preset"}, progress=False)
    # Not asked for (e.g. a recipe's default): the saved run goes on as it was, runtime changes taken.
    with Trainer(_cfg(tmp_path / "r", 2, preset="small", log_every=1), resume=True, progress=False) as t:
        assert t.cfg.preset == "tiny" and t.cfg.log_every == 1 and t.step == 1
    t = Trainer(_cfg(tmp_path / "r", 3), resume=True, asked={"steps", "preset"}, progress=False)
    assert t.cfg.steps == 3  # the budget may change even when asked


@pytest.mark.reliability
def test_init_starts_from_the_other_runs_ema_weights_and_records_it(tmp_path, tiny_mnist_run):
    from volscore.checkpoint import CHECKPOINT_NAME
    from volscore.run import Run

    start = Run.load(tiny_mnist_run).model.state_dict()  # the EMA weights
    t = Trainer(_cfg(tmp_path / "ft", 1, init=str(tiny_mnist_run)), progress=False)
    assert t.step == 0  # a new run: step, optimizer and generators start fresh
    for k, v in _params(t.model).items():
        assert torch.equal(v, start[k]), k
    for k, v in _params(t.ema.module).items():
        assert torch.equal(v, start[k]), f"ema.{k}"
    recorded = {"init": str(tiny_mnist_run), "step": 2}
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["data"]["init_from"] == recorded
    t.run()
    state = load_checkpoint(tmp_path / "ft" / CHECKPOINT_NAME)
    assert state["step"] == 1 and state["data"]["init_from"] == recorded
    assert state["config"]["init"] == str(tiny_mnist_run)
    resumed = Trainer(_cfg(tmp_path / "ft", 2, init=str(tiny_mnist_run)), resume=True, progress=False)
    resumed.run()  # resuming continues the fine-tuned weights and keeps the record
    assert load_checkpoint(tmp_path / "ft" / CHECKPOINT_NAME)["data"]["init_from"] == recorded


@pytest.mark.reliability
def test_init_from_another_model_is_refused_before_anything_is_written(tmp_path, tiny_run):
    with pytest.raises(CheckpointError, match="different model.*spatial_dims"):
        Trainer(_cfg(tmp_path / "ft", 1, init=str(tiny_run)), progress=False)
    assert not (tmp_path / "ft").exists()


@pytest.mark.reliability
def test_train_out_on_a_foreign_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    from volscore.cli import main
    from volscore.outputs import OutputError

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"jpg")
    argv = ["train", "--data", "mnist", "--out", str(folder), "--steps", "1", "--preset", "tiny"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not an empty folder or a volscore run" in err and "holiday.jpg" in err
    with pytest.raises(OutputError, match="holiday.jpg"):
        Trainer(_cfg(folder, 1), progress=False)
    assert [p.name for p in folder.iterdir()] == ["holiday.jpg"]
    assert (folder / "holiday.jpg").read_bytes() == b"jpg"


def test_ssm_method_auto_resolves_per_device_and_bad_choices_are_refused(tmp_path, capsys):
    from volscore.cli import main
    from volscore.train import SSM_AUTO_METHOD, resolve_ssm_method

    assert resolve_ssm_method("auto", torch.device("cpu")) == SSM_AUTO_METHOD["cpu"] == "forward"
    assert resolve_ssm_method("auto", torch.device("cuda")) == "exact"  # not measured on a GPU yet
    assert resolve_ssm_method("exact", torch.device("cpu")) == "exact"
    with pytest.raises(ValueError, match="ssm_method"):
        resolve_ssm_method("fd", torch.device("cpu"))
    with pytest.raises(ValueError, match="ssm_method"):
        _cfg(tmp_path / "r", 1, ssm_method="backward").validate()
    # the flag is generated from the field, with its choices
    argv = ["train", "--data", "mnist", "--out", str(tmp_path / "r"), "--steps", "1", "--objective", "ssm-vr"]
    assert main([*argv, "--ssm-method", "exact", "--dry-run"]) == 0
    assert '"ssm_method": "exact"' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*argv, "--ssm-method", "backward"])


def test_training_loss_is_the_same_for_both_ssm_methods():
    """The trainer's loss (EDM preconditioning, sigma^2 weight, coordinate channels in 3D) and its parameter
    gradients agree between forward mode and reverse over reverse, to float32 rounding."""
    from volscore.nets import build_model

    for dims, shape, coords in ((2, (3, 1, 12, 12), None), (3, (2, 1, 9, 9, 9), torch.rand(2, 3, 9, 9, 9))):
        torch.manual_seed(0)
        model = build_model("tiny", dims, coord_channels=coords is not None)
        with torch.no_grad():  # conv_out starts at zero: make every gradient nonzero
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
        sigma = torch.tensor([0.1, 1.0, 5.0][: shape[0]])
        for objective in ("ssm", "ssm-vr"):
            results = []
            for method in ("exact", "forward"):
                model.zero_grad(set_to_none=True)
                g = torch.Generator().manual_seed(2)
                loss = training_loss(model, objective, x, coords, sigma, g, ssm_method=method)
                loss.mean().backward()
                results.append((loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
            (loss_e, grad_e), (loss_f, grad_f) = results
            assert torch.allclose(loss_f, loss_e, rtol=1e-4, atol=1e-3), (dims, objective, loss_f, loss_e)
            assert float((grad_f - grad_e).norm() / grad_e.norm()) < 1e-4, (dims, objective)


def test_trainer_trains_alike_with_both_ssm_methods(tmp_path):
    runs = {}
    for method in ("exact", "forward"):
        runs[method] = Trainer(
            _cfg(tmp_path / method, 3, objective="ssm-vr", ssm_method=method), progress=False
        )
        runs[method].run()
    # The same maths: only float32 rounding differs (Adam's first steps move each weight by about lr).
    assert _max_param_diff(runs["exact"].model, runs["forward"].model) < 1e-4


# -- one training per run folder, interrupts, a full disk, non-finite weights ------------------------------
@pytest.mark.reliability
def test_a_second_training_on_the_same_run_is_refused_until_the_first_ends(tmp_path):
    import os

    from volscore.outputs import RUN_LOCK, RunLockError

    first = Trainer(_cfg(tmp_path / "r", 2), progress=False)
    assert json.loads((tmp_path / "r" / RUN_LOCK).read_text())["pid"] == os.getpid()
    for resume in (True, False):  # resuming it, or starting a new run in its folder
        with pytest.raises(RunLockError, match=f"this process|PID {os.getpid()}"):
            Trainer(_cfg(tmp_path / "r", 3), resume=resume, progress=False)
    first.run()
    assert not (tmp_path / "r" / RUN_LOCK).exists()  # released when run() ends
    with Trainer(_cfg(tmp_path / "r", 3), resume=True, progress=False) as second:
        assert second.lock.held and second.step == 2
    assert not (tmp_path / "r" / RUN_LOCK).exists()  # and by close()


@pytest.mark.reliability
def test_a_stale_lock_is_taken_over_and_a_refused_run_leaves_no_folder(tmp_path):
    from volscore.outputs import RUN_LOCK

    Trainer(_cfg(tmp_path / "r", 1), progress=False).run()
    # what a killed trainer leaves: the file, naming a process that is gone, but no flock on it
    (tmp_path / "r" / RUN_LOCK).write_text('{"pid": 999999999, "host": "here", "since": "then"}')
    with Trainer(_cfg(tmp_path / "r", 2), resume=True, progress=False) as t:
        assert t.lock.stale["pid"] == 999999999
    with pytest.raises(ValueError, match="mnistt"):  # a new run refused after taking its lock
        Trainer(_cfg(tmp_path / "new" / "run", 1, data=["mnistt"]), progress=False)
    assert not (tmp_path / "new").exists()


def _signal_at(trainer: Trainer, step: int, signum: int) -> None:
    """Send ``signum`` to this process while step ``step`` is being trained."""
    import os

    real = trainer.train_step

    def step_then_signal():
        info = real()
        if trainer.step == step:
            os.kill(os.getpid(), signum)
        return info

    trainer.train_step = step_then_signal


@pytest.mark.reliability
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_finishes_the_step_saves_and_the_resumed_run_is_the_same(tmp_path, signame):
    import signal

    from volscore.outputs import RUN_LOCK
    from volscore.train import TrainingInterrupted

    signum = getattr(signal, signame)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    straight = Trainer(_cfg(tmp_path / "a", 6), progress=False)
    straight.run()
    t = Trainer(_cfg(tmp_path / "b", 6), progress=False)  # checkpoints only at the end (ckpt_every 100)
    _signal_at(t, 3, signum)
    with pytest.raises(TrainingInterrupted) as info:
        t.run()
    e = info.value
    assert e.signum == signum and e.exit_status == 128 + signum and t.step == 3
    assert f"{signame} at step 3" in str(e) and f"--out {tmp_path / 'b'} --resume --steps 6" in str(e)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 3  # saved at the interrupt
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the handlers are put back
    assert not (tmp_path / "b" / RUN_LOCK).exists()
    resumed = Trainer(_cfg(tmp_path / "b", 6), resume=True, progress=False)
    resumed.run()
    for name in ("model", "ema"):
        a, b = _params(getattr(straight, name)), _params(getattr(resumed, name))
        assert all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.reliability
def test_cli_train_exits_143_on_sigterm_with_the_resume_command(tmp_path, capsys, monkeypatch):
    import os
    import signal

    from volscore.cli import main

    real = Trainer.train_step

    def step_then_sigterm(self):
        info = real(self)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return info

    monkeypatch.setattr(Trainer, "train_step", step_then_sigterm)
    run = tmp_path / "r"
    argv = ["train", "--data", "mnist", "--out", str(run), "--steps", "50", "--preset", "tiny"]
    assert main([*argv, "--batch-size", "4", "--sigma-max", "5", "--num-sigmas", "4", "--amp", "off"]) == 143
    err = capsys.readouterr().err
    assert "SIGTERM at step 2" in err and f"--out {run} --resume --steps 50" in err
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2


SIGTERM_CHILD_TIMEOUT = 120  # seconds: a tiny MNIST run starts in a few seconds even on a busy machine


@pytest.mark.reliability
def test_sigterm_to_a_training_process_saves_and_exits_143(tmp_path):
    """The real thing, once: ``volscore train`` in its own process, SIGTERM while it trains."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    run = tmp_path / "r"
    argv = [sys.executable, "-m", "volscore", "train", "--data", "mnist", "--out", str(run)]
    argv += ["--preset", "tiny"]
    argv += ["--steps", "100000", "--batch-size", "4", "--ckpt-every", "100000"]
    argv += ["--sigma-max", "5", "--num-sigmas", "4", "--amp", "off", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONWARNINGS": "ignore"}
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + SIGTERM_CHILD_TIMEOUT
        while not (run / "metrics.csv").exists():  # written at step 25, inside the training loop
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the training did not start"
            time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=SIGTERM_CHILD_TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 143, err
    step = load_checkpoint(run / "checkpoint.pt")["step"]
    assert step >= 1 and f"SIGTERM at step {step}" in err and "--resume" in err
    assert not (run / "run.lock").exists() and not list(run.glob(".checkpoint.*"))


@pytest.mark.reliability
def test_a_full_disk_while_saving_is_a_clear_error_and_the_previous_checkpoint_is_kept(
    tmp_path, capsys, monkeypatch
):
    import errno

    from volscore import train
    from volscore.atomic import atomic_write
    from volscore.cli import main

    calls = []

    def disk_fills_up(path, state):
        calls.append(state["step"])
        if len(calls) == 1:
            return save_checkpoint(path, state)

        def half_then_full(tmp):
            tmp.write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")

        return atomic_write(path, half_then_full)

    monkeypatch.setattr(train, "save_checkpoint", disk_fills_up)
    run = tmp_path / "r"
    argv = ["train", "--data", "mnist", "--out", str(run), "--steps", "4", "--ckpt-every", "2"]
    argv += ["--preset", "tiny", "--batch-size", "4", "--sigma-max", "5", "--num-sigmas", "4", "--amp", "off"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "checkpoint.pt" in err and "step 2 on disk is intact" in err
    assert "Traceback" not in err and calls == [2, 4]
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2  # the previous checkpoint, whole
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".") or p.name == "run.lock") == []


@pytest.mark.reliability
def test_resume_refuses_non_finite_weights_naming_the_tensor(tmp_path):
    Trainer(_cfg(tmp_path / "r", 1), progress=False).run()
    state = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name][...] = float("nan")
    save_checkpoint(tmp_path / "r" / "checkpoint.pt", state)
    with pytest.raises(CheckpointError, match=f"non-finite model weights.*{name}"):
        Trainer(_cfg(tmp_path / "r", 2), resume=True, progress=False)
    assert not (tmp_path / "r" / "run.lock").exists()
