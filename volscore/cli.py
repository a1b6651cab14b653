"""The ``volscore`` command: each subcommand parses, calls one library function and prints. Flags come from
the option records (``TrainConfig``, ``SamplerSettings``, ``options.*``); heavy imports live inside the
commands, so ``volscore --help`` answers at once."""

from __future__ import annotations

import argparse
import json
import sys

from volscore.arguments import add_arguments, finite, from_namespace
from volscore.config import TrainConfig
from volscore.options import (
    VOLUME_INDEX_HELP,
    BaselineOptions,
    DemoOptions,
    DenoiseOptions,
    NoisyOptions,
    RestoreOptions,
    SampleOptions,
)
from volscore.sampling.settings import SamplerSettings

EXAMPLES = """examples:
  volscore demo                                       # 3D: sample a brain, denoise a hold-out block
  volscore baseline --minutes 20                      # 2D MNIST: train, sample, evaluate
  volscore train --data mnist --out runs/mnist --minutes 10
  volscore sample --run runs/mnist --n 64 --out runs/mnist/grid.png
  volscore info data/mni152_2009a_sym_t1_1mm.nii.gz
  volscore noisy mni152 noisy.nii.gz --fraction 0.05   # a noisy copy with known sigma
  volscore denoise noisy.nii.gz clean.nii.gz --png before_after.png   # bundled T1 denoiser
  volscore denoise noisy.nii.gz clean.nii.gz --self-supervised --minutes 10
  volscore restore thick.nii.gz fine.nii.gz --png sr.png          # thick slices -> fine slices
  volscore restore scan.nii.gz filled.nii.gz --task inpaint --mask hole.nii.gz
  volscore models                                     # the bundled pretrained models
  volscore sample --run pretrained:mni152-prior --out brain.nii.gz
"""


def _threads(a: argparse.Namespace) -> int:
    from volscore.machine import set_threads

    return set_threads(a.threads)


def _say_rank0(rank: int):
    return print if rank == 0 else (lambda *_: None)


# -- commands ------------------------------------------------------------------------------------------
def cmd_train(a: argparse.Namespace) -> int:
    from volscore.train import Trainer

    cfg = from_namespace(TrainConfig, a)
    if a.dry_run:
        cfg.validate()
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    _threads(a)
    with Trainer(cfg, resume=a.resume, asked=_asked(a)) as trainer:
        c, say = trainer.cfg, _say_rank0(trainer.rank)
        if trainer.lock.stale:
            say(f"took over {trainer.lock.path} left by PID {trainer.lock.stale.get('pid')}, which has ended")
        ranks = f" on {trainer.world} processes" if trainer.world > 1 else ""
        say(
            f"training {c.objective} on {' '.join(c.data)}{ranks}: sigma {c.sigma_max} -> {c.sigma_min} "
            f"({c.num_sigmas} levels), from step {trainer.step}"
        )
        out = trainer.run()
        say(f"run: {out}  (checkpoint.pt, metrics.csv, loss.png) at step {trainer.step}")
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    from volscore.generate import describe_record, sample_run
    from volscore.run import Run

    options, settings = from_namespace(SampleOptions, a), from_namespace(SamplerSettings, a)
    options.validate()  # before the run is loaded
    settings.validate()
    _threads(a)
    record = sample_run(Run.load(a.run), options, settings)
    print(describe_record(record))
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from volscore.metrics.mnist import evaluate_mnist_file, format_mnist_metrics

    if a.json:
        from volscore.outputs import check_outputs

        check_outputs([a.json], inputs=[a.samples], force=a.force)
    print(format_mnist_metrics(evaluate_mnist_file(a.samples, a.json)))
    return 0


def cmd_baseline(a: argparse.Namespace) -> int:
    from volscore.recipes import baseline

    _threads(a)
    baseline(from_namespace(BaselineOptions, a), from_namespace(SamplerSettings, a))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from volscore.recipes import demo

    _threads(a)
    demo(from_namespace(DemoOptions, a), from_namespace(SamplerSettings, a))
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from volscore.pretrained import describe, list_models

    names = list_models()
    print("\n\n".join(describe(n) for n in names) if names else "no bundled models")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from volscore.data.nifti import describe

    for path in a.files:
        print(describe(path, a.volume_index))
    return 0


def cmd_denoise(a: argparse.Namespace) -> int:
    from volscore.denoise.command import denoise_paths

    options, note = from_namespace(DenoiseOptions, a).with_default_model()
    options.validate()
    if note:
        print(note)
    _threads(a)
    status, lines = denoise_paths(
        options,
        a.input,
        a.output,
        a.in_dir,
        a.out_dir,
        png=a.png,
        record=a.record,
        force=a.force,
        fit_dir=a.fit_dir,
    )
    print("\n".join(lines))
    return status


def cmd_restore(a: argparse.Namespace) -> int:
    from volscore.restore.command import restore_paths

    options = from_namespace(RestoreOptions, a)
    options.validate()
    _threads(a)
    lines = restore_paths(
        options, a.input, a.output, png=a.png, record=a.record, std_out=a.std_out, force=a.force
    )
    print("\n".join(lines))
    return 0


def cmd_noisy(a: argparse.Namespace) -> int:
    from volscore.corrupt import make_noisy_file

    o = from_namespace(NoisyOptions, a)
    r = make_noisy_file(a.input, a.output, o.fraction, o.noise, o.seed, o.force, o.volume_index)
    print(f"{r['input']} -> {r['output']}: {r['noise']} noise, sigma {r['sigma']:.4g} "
          f"({r['fraction']} x the 99.5th percentile)")  # fmt: skip
    return 0


# -- parser --------------------------------------------------------------------------------------------
def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=finite(int),
        help="torch CPU threads (default: the cores this process may run on, by its affinity mask)",
    )


def _asked(a: argparse.Namespace) -> set[str]:
    """The training options set to something other than their default: what ``--resume`` must not change."""
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return {k for k, v in vars(a).items() if k in defaults and v != defaults[k]}


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="volscore",
        description="Score-based generative modelling for 2D and 3D.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a score model (2D images or 3D patches)", formatter_class=fmt)
    add_arguments(p, TrainConfig, required=("data", "out"))
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and stop")
    _add_threads(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="sample images, shapes or a volume from a run", formatter_class=fmt)
    p.add_argument("--run", required=True, help="run folder, or pretrained:NAME")
    add_arguments(p, SampleOptions, required=("out",))
    add_arguments(p, SamplerSettings)
    _add_threads(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="MNIST sample quality of a .npy of samples", formatter_class=fmt)
    p.add_argument("samples", help=".npy of (N, 1, 28, 28) samples in [0, 1]")
    p.add_argument("--json", help="also write the numbers here")
    p.add_argument("--force", action="store_true", help="replace an existing --json")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("baseline", help="2D MNIST baseline: train, sample, evaluate", formatter_class=fmt)
    add_arguments(p, BaselineOptions)
    add_arguments(p, SamplerSettings)
    _add_threads(p)
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser(
        "demo",
        help="3D main job: sample a brain from the bundled prior, denoise a hold-out block",
        formatter_class=fmt,
    )
    add_arguments(p, DemoOptions)
    add_arguments(p, SamplerSettings)
    _add_threads(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "denoise",
        help="denoise NIfTI scans with a trained run or self-supervised",
        formatter_class=fmt,
        description="Denoise a scan (INPUT OUTPUT) or a folder (-i IN_DIR -o OUT_DIR). The output has the "
        "input's shape, affine and header, float32, in the input's intensity units; the input is never "
        "written over. Also writes a JSON record (sigma used, method, timings).",
    )
    p.add_argument("input", nargs="?", help="noisy NIfTI scan")
    p.add_argument("output", nargs="?", help="denoised NIfTI to write")
    p.add_argument("-i", "--in-dir", help="folder mode: every NIfTI file in this folder")
    p.add_argument("-o", "--out-dir", help="folder mode: outputs keep their names here")
    add_arguments(p, DenoiseOptions)
    p.add_argument("--fit-dir", help="--self-supervised: keep the fitted run here (default: temporary)")
    p.add_argument("--png", help="before/after slice picture")
    p.add_argument("--record", help="JSON record (default: OUTPUT's name + .denoise.json)")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    _add_threads(p)
    p.set_defaults(func=cmd_denoise)

    p = sub.add_parser(
        "restore",
        help="super-resolve thick slices or fill in a masked region with a trained prior",
        formatter_class=fmt,
        description="Restore a scan with a 3D prior (default: the bundled T1 model): --task superres gives "
        "a thick-slice scan fine slices (the thick axis and factor read from the header; the output's affine "
        "covers the same world extent), --task inpaint fills in the voxels where --mask is nonzero (all "
        "others are kept bit for bit). float32 NIfTI in the input's units; the input is never written over.",
    )
    p.add_argument("input", help="NIfTI scan")
    p.add_argument("output", help="restored NIfTI to write")
    add_arguments(p, RestoreOptions)
    p.add_argument("--std-out", help="--n-samples > 1: the per-voxel sd map (default: OUTPUT_std.nii.gz)")
    p.add_argument("--png", help="before/after slice picture")
    p.add_argument("--record", help="JSON record (default: OUTPUT's name + .restore.json)")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    _add_threads(p)
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser(
        "noisy", help="write a noisy copy of a scan (known noise, to try the denoiser)", formatter_class=fmt
    )
    p.add_argument("input", help="NIfTI scan, or mni152 for the bundled template")
    p.add_argument("output", help="noisy NIfTI to write")
    add_arguments(p, NoisyOptions)
    p.set_defaults(func=cmd_noisy)

    p = sub.add_parser(
        "models", help="list the bundled pretrained models and their cards", formatter_class=fmt
    )
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="describe NIfTI files", formatter_class=fmt)
    p.add_argument("files", nargs="+")
    p.add_argument("--volume-index", type=finite(int), help=VOLUME_INDEX_HELP)
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from volscore.checkpoint import CheckpointError
    from volscore.data.nifti import VolumeError

    try:
        return int(args.func(args) or 0)
    except (VolumeError, CheckpointError, OSError, ValueError, FloatingPointError) as e:
        print(f"volscore {args.command}: error: {e}", file=sys.stderr)
        return 2
    except MemoryError as e:
        print(f"volscore {args.command}: error: not enough memory {e}".rstrip(), file=sys.stderr)
        return 2
    except RuntimeError as e:  # torch's allocation failures: CPU (a plain RuntimeError) and CUDA
        if "can't allocate memory" not in str(e) and type(e).__name__ != "OutOfMemoryError":
            raise
        print(f"volscore {args.command}: error: not enough memory ({e})", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C; training stopped by SIGINT/SIGTERM (TrainingInterrupted)
        print(f"volscore {args.command}: interrupted{f': {e}' if str(e) else ''}", file=sys.stderr)
        return int(getattr(e, "exit_status", 130))


if __name__ == "__main__":
    sys.exit(main())
