"""One training loop for 2D images and 3D patches: DSM or SSM, AMP, EMA, clipping, warm-up, resume.

The run directory holds ``config.json``, ``checkpoint.pt`` (atomic, weights_only-loadable),
``metrics.csv``, ``loss.png`` and ``preview.png``. All randomness of a step (batch, sigma, noise,
projections) comes from one ``torch.Generator`` saved in the checkpoint, so a resumed run continues
exactly where the saved one stopped. One training at a time holds the run folder (``outputs.RunLock``), and
SIGINT or SIGTERM end it after the current step with a checkpoint (``TrainingInterrupted``).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shlex
import signal
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from volscore.atomic import atomic_write_json
from volscore.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    check_finite,
    check_model_args,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from volscore.config import RUNTIME_FIELDS, SSM_METHODS, TrainConfig
from volscore.noise import append_dims, ncsnv2_num_sigmas, randn, sample_training_sigmas, sigma_max_from_data
from volscore.objectives import dsm_loss, ssm_loss
from volscore.outputs import RunLock, RunLockError, check_run_folder

METRIC_FIELDS = ["step", "loss", "sigma_mean", "lr", "grad_norm", "sec_per_step", "skipped"]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # finish the step, save, stop (``TrainingInterrupted``)


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM ended ``Trainer.run`` after a whole step and a checkpoint. A KeyboardInterrupt, so
    that whatever called the trainer stops too (a recipe does not go on to sample); ``exit_status`` is the
    shell's 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_status = 128 + signum


def resume_command(cfg: TrainConfig) -> str:
    """The command that continues the run of ``cfg`` with the same budget."""
    budget = f"--steps {cfg.steps}" if cfg.steps is not None else f"--minutes {cfg.minutes:g}"
    data = " ".join(shlex.quote(d) for d in cfg.data)
    return f"volscore train --data {data} --out {shlex.quote(cfg.out)} --resume {budget}"


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and local_rank is not None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", local_rank)))
        torch.cuda.set_device(device)
    return device


def distributed_setup(device: str) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group); under torchrun, join the process
    group (NCCL on GPUs, gloo on CPU). Whoever created the group destroys it (``Trainer.close``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), created


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """bf16 on CPU and on GPUs that support it, fp16 on older GPUs, None for full precision."""
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError("--amp fp16 needs a CUDA device (use bf16 on CPU)")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def ema_with_warmup(decay: float):
    """EMA for ``AveragedModel`` with the usual warm-up decay min(decay, (1 + n) / (10 + n)).

    torch's ``get_ema_multi_avg_fn`` uses the full decay from the first step, so a short run's EMA
    would still be mostly the random initial weights (0.999^400 = 0.67).
    """

    @torch.no_grad()
    def update(ema_params: list[Tensor], params: list[Tensor], num_averaged: Tensor | int) -> None:
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(ema_params, params, 1 - d)

    return update


def default_batch_size(spatial_dims: int) -> int:
    """64 images for 2D (MNIST), 4 patches or shapes for 3D (a 32^3 sample is 42x an MNIST image)."""
    return 64 if spatial_dims == 2 else 4


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then constant or cosine decay to 0 at ``cfg.steps``."""
    lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
    if cfg.lr_schedule == "cosine" and cfg.steps is not None and step >= cfg.warmup:
        progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return lr


# --ssm-method auto per device type, measured as scripts/bench_perf.py does (small 3D model, 32^3, batch 4,
# Adam step, one thread, medians of alternating rounds): on CPU an SSM-VR step cost 2.25-2.3x a DSM step
# with forward mode against 2.65-2.75x by reverse over reverse in fp32, and 2.4-2.7x against 2.5-3.1x in
# bf16 (three runs at load 3.5-5 on 2 cores). Not measured on a GPU yet: "exact" there until
# scripts/gpu_check.sh's bench rows (SSM-VR and SSM-VR forward) say otherwise.
SSM_AUTO_METHOD = {"cpu": "forward"}


def resolve_ssm_method(choice: str, device: torch.device) -> str:
    """``ssm_loss``'s method for ssm and ssm-vr: the choice itself, or for "auto" the faster one on this
    device type (``SSM_AUTO_METHOD``, else "exact")."""
    if choice not in SSM_METHODS:
        raise ValueError(f"ssm_method must be one of {SSM_METHODS}, got {choice!r}")
    return SSM_AUTO_METHOD.get(device.type, "exact") if choice == "auto" else choice


def training_loss(
    model: torch.nn.Module,
    objective: str,
    x: Tensor,
    coords: Tensor | None,
    sigma: Tensor,
    generator: torch.Generator,
    weighting: str = "sigma2",
    sigma_data: float = 0.5,
    ssm_method: str = "auto",
) -> Tensor:
    """Per-sample loss |s - target|^2 weighted by lambda(sigma).

    "sigma2": lambda = sigma^2, every noise level an O(1) noise-prediction error (NCSN).
    "edm": lambda = sigma^2 (sigma^2 + sd^2) / sd^2, which is EDM's (sigma^2 + sd^2) / (sigma sd)^2 on
    |D - x|^2 = sigma^4 |s - target|^2: unit weight on the preconditioned network's own output F.
    """

    def score_fn(y: Tensor, s: Tensor) -> Tensor:
        c = coords
        if c is not None and y.shape[0] != c.shape[0]:  # FD-SSM evaluates x + eps v and x - eps v at once
            c = c.repeat(y.shape[0] // c.shape[0], *([1] * (c.ndim - 1)))
        return model(y, s, c)

    weight = sigma**2 if weighting == "sigma2" else sigma**2 * (sigma**2 + sigma_data**2) / sigma_data**2
    if objective == "dsm":
        return dsm_loss(score_fn, x, sigma, generator=generator) * weight
    # SSM learns the score of the noisy data p_sigma directly from noisy samples.
    eps = randn(x.shape, generator, x.device, x.dtype)
    x_noisy = x + append_dims(sigma, x.ndim) * eps
    method = "fd" if objective == "ssm-fd" else resolve_ssm_method(ssm_method, x.device)
    loss = ssm_loss(
        score_fn,
        x_noisy,
        variance_reduced=objective != "ssm",
        sigma=sigma,
        method=method,
        generator=generator,
    )
    return loss * weight


def _estimate_sigmas(cfg: TrainConfig, source: Any) -> None:
    """Fill sigma_max (NCSNv2 technique 1) and num_sigmas (technique 2) from the data when unset."""
    g = torch.Generator().manual_seed(cfg.seed + 12345)
    if cfg.sigma_max is None:
        # 10 draws of 100 keep the coordinate channels of a single draw small (they are dropped here).
        x = torch.cat([source.sample(100, g)[0] for _ in range(10)])
        cfg.sigma_max = round(sigma_max_from_data(x, max_points=1000, generator=g), 3)
        if cfg.sigma_max <= cfg.sigma_min:
            # e.g. a volume no larger than the patch: every training patch is the same
            raise ValueError(
                f"the training samples are (nearly) all the same (largest distance {cfg.sigma_max}), "
                "so sigma_max cannot be estimated from them; give --sigma-max or train on larger volumes"
            )
    if cfg.num_sigmas is None:
        d = math.prod(source.sample_shape)
        cfg.num_sigmas = ncsnv2_num_sigmas(d, cfg.sigma_max, cfg.sigma_min)


class Trainer:
    """Holds the model, EMA, optimizer and data of one run; ``run()`` trains until the budget ends.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel (NCCL on
    GPUs, gloo on CPU): rank r draws its batches from its own generator (seed, shard r), gradients are
    averaged, and only rank 0 writes files. A single process with ``data_shards = K`` draws the same K
    shards in turn and averages their gradients, which reproduces a K-process run with one process.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        resume: bool = False,
        progress: bool = True,
        source: Any | None = None,
        asked: set[str] | None = None,
    ) -> None:
        """``source`` overrides ``cfg.data`` with an in-memory source (``volscore.data.sources.Source``),
        e.g. patches of one noisy scan for self-supervised denoising. On ``resume``, the run's saved
        configuration is used with ``cfg``'s runtime fields (``config.RUNTIME_FIELDS``: budget, device,
        ...); the other fields named in ``asked`` (set on purpose by the caller) must agree with the saved."""
        cfg.validate()
        self.rank, self.world, self._owns_group = distributed_setup(cfg.device)
        self.out = Path(cfg.out)
        self.lock = RunLock(self.out)  # held by rank 0 from here to the end of run() or close()
        weakref.finalize(self, self.lock.release)
        self._signal: int | None = None
        self._saved_step: int | None = None
        created = [p for p in (self.out.absolute(), *self.out.absolute().parents) if not p.exists()]
        try:
            self.cfg, state = self._configure(cfg, resume, asked)
            self.progress = progress and self.rank == 0
            self._build(source, state)
            if self.rank == 0:
                self._write_run_files()
        except BaseException:
            self.lock.release()
            for folder in created:  # leave no empty folder behind a refused run
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise

    # -- setup: configuration, model and data, files ----------------------------------------------------
    def _configure(
        self, cfg: TrainConfig, resume: bool, asked: set[str] | None
    ) -> tuple[TrainConfig, dict[str, Any] | None]:
        """The run's configuration (the saved one on resume, with the new runtime fields) and its state."""
        ckpt_path = self.out / CHECKPOINT_NAME
        if not resume:
            if ckpt_path.exists():
                raise FileExistsError(f"{self.out}: a run already exists here; use --resume or another --out")
            check_run_folder(self.out)
            self._take_lock()
            if ckpt_path.exists():  # another training finished here between the check and the lock
                raise FileExistsError(f"{self.out}: a run already exists here; use --resume or another --out")
            return cfg, None
        if self.out.is_dir():  # (else load_checkpoint below says there is no run)
            self._take_lock()  # before touching the run's files: another trainer may be saving
        if self.rank == 0:  # a run killed while saving leaves its temporary file behind
            remove_stale_temporaries(ckpt_path)
        state = load_checkpoint(ckpt_path)
        saved = TrainConfig.from_dict(state["config"])
        changes = [c for c in saved.model_changes(cfg) if c.split(":")[0] in (asked or ())]
        if changes:
            raise ValueError(
                f"{self.out}: --resume continues the saved run, which these options would change: "
                + "; ".join(changes)
                + " (start a new run with another --out, or use --init RUN to start from its weights)"
            )
        for name in RUNTIME_FIELDS:  # the budget and how it runs may change on resume
            setattr(saved, name, getattr(cfg, name))
        saved.validate()
        return saved, state

    def _take_lock(self) -> None:
        """Rank 0 takes the run's lock; under torchrun every rank learns whether it got it."""
        error = None
        if self.rank == 0:
            try:
                self.lock.acquire()
            except RunLockError as e:
                error = str(e)
        if self.world > 1:
            import torch.distributed as dist

            nccl = dist.get_backend() == "nccl"
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if nccl else None
            box = [error]
            dist.broadcast_object_list(box, src=0, device=device)
            error = box[0]
        if error:
            raise RunLockError(error)

    def _build(self, source: Any | None, state: dict[str, Any] | None) -> None:
        """Data, sigma range, model, EMA, optimizer, scaler, generators, DDP and compile."""
        from torch.optim.swa_utils import AveragedModel

        from volscore.data.sources import open_source
        from volscore.nets import build_model_from_args, model_args

        cfg = self.cfg
        self.init_from: dict[str, Any] | None = None
        self._saved_meta: dict[str, Any] | None = None
        self.device = resolve_device(cfg.device, self.rank if self.world > 1 else None)
        self.amp = amp_dtype(cfg.amp, self.device)
        self.source = source or open_source(
            cfg.data,
            patch_size=cfg.patch_size,
            coords=cfg.coords,
            spacing=cfg.spacing,
            full_volume=cfg.full_volume,
            augment=cfg.augment,
            multires=cfg.multires,
        )
        if cfg.batch_size is None:
            cfg.batch_size = default_batch_size(self.source.spatial_dims)
        _estimate_sigmas(cfg, self.source)
        self.model_args = model_args(
            cfg.preset,
            self.source.spatial_dims,
            in_channels=self.source.sample_shape[0],
            coord_channels=self.source.coord_channels > 0,
            sigma_data=cfg.sigma_data,
            kind=cfg.precond,
            coord_frequencies=cfg.coord_frequencies,
        )
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model = build_model_from_args(self.model_args).to(self.device)
        if cfg.init is not None and state is None:
            self._load_init(cfg.init)
        if cfg.channels_last:  # convolutions follow the weights' format; the EMA copy below keeps it
            fmt = torch.channels_last_3d if self.source.spatial_dims == 3 else torch.channels_last
            self.model = self.model.to(memory_format=fmt)
        self.ema = AveragedModel(self.model, multi_avg_fn=ema_with_warmup(cfg.ema_decay), use_buffers=True)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.shards = [self.rank] if self.world > 1 else list(range(cfg.data_shards))
        self.generators = {r: torch.Generator().manual_seed(cfg.seed + 1_000_003 * r) for r in self.shards}
        self.step = 0
        self.skipped = 0
        if state is not None:
            check_model_args(self.out / CHECKPOINT_NAME, self.model_args, state["model_args"])
            self._load_state(state)
        self.net = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:  # compiles on the first step (about a minute on a CPU); checkpoints hold self.model
            self.net = torch.compile(self.net)

    def _load_init(self, init: str) -> None:
        """Start from another run's (EMA) weights, e.g. ``pretrained:NAME``: fine-tuning. The model must be
        the same; the optimizer, step and generators start fresh."""
        from volscore.run import Run

        start = Run.load(init)
        check_model_args(init, self.model_args, start.model_args)
        self.model.load_state_dict(start.model.state_dict())
        self.init_from = {"init": start.name, "step": start.step}

    @property
    def meta(self) -> dict[str, Any]:
        """What readers of the run need besides the config (``volscore.run.Run``): the source's meta, the
        sample shape, and where fine-tuning started."""
        meta = dict(self.source.meta)
        if meta.get("kind") in ("mnist", "shapes") and "patch_size" not in meta:  # whole samples
            meta["sample_shape"] = list(self.source.sample_shape[1:])
        init = self.init_from or (self._saved_meta or {}).get("init_from")
        if init:
            meta["init_from"] = init
        return meta

    def _write_run_files(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.out / "config.json",
            {"config": self.cfg.to_dict(), "model_args": self.model_args, "data": self.meta},
        )

    def close(self) -> None:
        """Release the run folder's lock and leave the process group this trainer created (torchrun)."""
        self.lock.release()
        if self._owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._owns_group = False

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -------------------------------------------------------------------------------------
    def _generator_states(self) -> dict[int, Tensor]:
        states = {r: g.get_state() for r, g in self.generators.items()}
        if self.world > 1:  # a collective: every rank calls it, rank 0 keeps all shards' states
            gathered: list[Any] = [None] * self.world
            torch.distributed.all_gather_object(gathered, states)
            states = {r: st for part in gathered for r, st in part.items()}
        return states

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "skipped": self.skipped,
            "rng": {"generators": self._generator_states(), "torch": torch.get_rng_state()},
            "model_args": self.model_args,
            "config": self.cfg.to_dict(),
            "data": self.meta,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        path = self.out / CHECKPOINT_NAME
        check_finite(path, state["model"], "model weights")
        if "ema" in state:
            check_finite(path, state["ema"], "EMA weights")
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            for r, g in self.generators.items():
                g.set_state(state["rng"]["generators"][r])
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{self.out / CHECKPOINT_NAME}: state does not fit this run: {e}") from e
        self.step = int(state["step"])
        self._saved_step = self.step
        self.skipped = int(state.get("skipped", 0))
        self._saved_meta = state.get("data")
        torch.set_rng_state(state["rng"]["torch"])

    def save(self) -> Path:
        state = self.state_dict()  # every rank joins the gather inside
        path = self.out / CHECKPOINT_NAME
        if self.rank == 0:
            with self._writing(path, f"the checkpoint of step {self.step}"):
                save_checkpoint(path, state)
            self._saved_step = self.step
        return path

    @contextlib.contextmanager
    def _writing(self, path: Path, what: str) -> Iterator[None]:
        """A failed write (a full disk, a lost mount) as an OSError that names the file and says what is kept:
        writes are atomic, so the previous file is whole."""
        try:
            yield
        except OSError as e:
            kept = (
                "no checkpoint was saved yet"
                if self._saved_step is None
                else f"the checkpoint of step {self._saved_step} on disk is intact (--resume continues it)"
            )
            reason = e.strerror or str(e) or type(e).__name__
            raise OSError(e.errno, f"{path}: could not write {what} ({reason}); {kept}") from e

    # -- training ----------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _all_mean(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(t)
            t /= self.world
        return t.tolist()

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        losses, sigmas = [], []
        for r in self.shards:  # one shard per rank under DDP; K shards in turn in one process
            gen = self.generators[r]
            x, coords = self.source.sample(cfg.batch_size, gen)
            x = x.to(self.device)
            coords = None if coords is None else coords.to(self.device)
            sigma = sample_training_sigmas(
                cfg.sigma_dist,
                x.shape[0],
                gen,
                cfg.sigma_min,
                cfg.sigma_max,
                cfg.num_sigmas,
                cfg.p_mean,
                cfg.p_std,
            ).to(self.device)
            with self._autocast():
                per_sample = training_loss(
                    self.net,
                    cfg.objective,
                    x,
                    coords,
                    sigma,
                    gen,
                    cfg.weighting,
                    cfg.sigma_data,
                    ssm_method=cfg.ssm_method,
                )
            loss = per_sample.float().mean() / len(self.shards)
            losses.append(loss)
            sigmas.append(float(sigma.mean()))
        total = torch.stack(losses).sum()
        # Every rank must agree to skip, or the others would wait in the gradient all-reduce forever.
        mean_loss, finite = self._all_mean([float(total.detach()), float(torch.isfinite(total))])
        self.step += 1
        if finite < 1.0:
            self.skipped += 1
            return {"loss": float("nan"), "sigma_mean": sum(sigmas) / len(sigmas), "grad_norm": float("nan")}
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update_parameters(self.model)
        return {"loss": mean_loss, "sigma_mean": sum(sigmas) / len(sigmas), "grad_norm": float(grad_norm)}

    def _metrics_rows(self) -> list[dict[str, str]]:
        path = self.out / "metrics.csv"
        if not path.exists():
            return []
        with open(path, newline="") as f:
            return [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]

    def _should_stop(self, deadline: float | None) -> bool:
        """The budget is spent, or a stop signal came (``self._signal``); every rank decides alike."""
        stop = (self.cfg.steps is not None and self.step >= self.cfg.steps) or (
            deadline is not None and time.monotonic() >= deadline
        )
        if self.world > 1:  # rank 0's clock decides, and a signal to any rank stops every rank at this step
            flags = torch.tensor(
                [float(stop and self.rank == 0), float(self._signal or 0)], device=self.device
            )
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            stop, self._signal = bool(flags[0].item()), int(flags[1].item()) or None
        return stop or self._signal is not None

    @contextlib.contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM only set ``self._signal`` (the loop stops after the step it is in and saves);
        the first one puts the previous handler back, so a second one acts at once as usual."""
        if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
            yield
            return

        def stop(signum: int, frame: Any) -> None:
            self._signal = signum
            signal.signal(signum, previous[signum])

        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        for s in STOP_SIGNALS:
            signal.signal(s, stop)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def run(self) -> Path:
        """Train until ``steps`` in total or ``minutes`` of wall-clock, then checkpoint and plot.

        SIGINT or SIGTERM end it early in the same way (the step in progress is finished and saved), then
        raise ``TrainingInterrupted`` with the command that resumes the run. The run folder's lock is
        released when this returns or raises."""
        if self.rank == 0:
            self.lock.acquire()  # held since __init__, unless an earlier run() released it
        self._signal = None
        try:
            with self._stop_signals():
                self._train()
        finally:
            self.lock.release()
        if self._signal is not None:
            name = signal.Signals(self._signal).name
            raise TrainingInterrupted(
                self._signal,
                f"{name} at step {self.step}: stopped after the step and saved {self.out / CHECKPOINT_NAME}; "
                f"continue with: {resume_command(self.cfg)}",
            )
        return self.out

    def _train(self) -> None:
        from tqdm.auto import tqdm

        cfg = self.cfg
        # Rows logged after the last checkpoint of a killed run are dropped: they will be redone.
        rows = self._metrics_rows() if self.rank == 0 else []
        deadline = None if cfg.minutes is None else time.monotonic() + 60 * cfg.minutes
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.progress, desc="train", unit="step")
        window: list[float] = []
        last = time.monotonic()
        while not self._should_stop(deadline):
            info = self.train_step()
            now = time.monotonic()
            if math.isfinite(info["loss"]):
                window.append(info["loss"])
            if self.skipped > cfg.max_skipped:
                self.save()
                raise FloatingPointError(
                    f"stopping: {self.skipped} steps had a non-finite loss (limit {cfg.max_skipped}); "
                    "lower --lr, use --amp bf16 or off, or check the data"
                )
            bar.update(1)
            if self.step % cfg.log_every == 0:
                row = {
                    "step": self.step,
                    "loss": sum(window) / max(1, len(window)),
                    "sigma_mean": info["sigma_mean"],
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "grad_norm": info["grad_norm"],
                    "sec_per_step": (now - last) / cfg.log_every,
                    "skipped": self.skipped,
                }
                rows.append({k: str(v) for k, v in row.items()})
                bar.set_postfix(loss=f"{row['loss']:.4g}")
                window, last = [], now
                self._write_metrics(rows)
            if self.step % cfg.ckpt_every == 0:
                self.save()
        bar.close()
        self.save()
        self._write_metrics(rows)
        if self.rank == 0 and rows:
            from volscore.plots import save_loss_curve

            with self._writing(self.out / "loss.png", "the loss curve"):
                save_loss_curve(
                    [int(r["step"]) for r in rows],
                    [float(r["loss"]) for r in rows],
                    self.out / "loss.png",
                    ylabel=f"{cfg.objective} loss (sigma^2-weighted)",
                )

    def _write_metrics(self, rows: list[dict[str, str]]) -> None:
        if self.rank != 0:
            return
        from volscore.atomic import atomic_write_text

        lines = [",".join(METRIC_FIELDS)] + [",".join(r[k] for k in METRIC_FIELDS) for r in rows]
        with self._writing(self.out / "metrics.csv", "the metrics"):
            atomic_write_text(self.out / "metrics.csv", "\n".join(lines) + "\n")
