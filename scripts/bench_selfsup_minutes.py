"""Self-supervised denoising against the fit time: PSNR of a fit on the noisy scan alone after M minutes.

    .venv/bin/python scripts/bench_selfsup_minutes.py --minutes 2 5 10 --threads 2 \
        --json scripts/results/bench_selfsup_minutes.json

For each case of ``bench_denoise`` (default the template's 96^3 hold-out block) at Gaussian ``--fraction`` of
its reference level (seeded as there), ``volscore denoise --self-supervised --minutes M`` (Noise2Score on the
noisy scan; ``--init`` a trained run to fine-tune, default the bundled ``pretrained:t1-denoiser``; ``--init
''`` fits from scratch), one fit per M, through ``denoise_file`` as a user's call would go; beside it the
noisy input, the ``--init`` model used as it is (one Tweedie pass, no fit) and BM4D. Why: issue #15 asks how
the self-supervised fit compares with BM4D within 10 fit minutes, as a function of the fit time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the harness and sibling benches
import harness  # noqa: E402


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from bench_denoise import CASES, load_cases, noisy_scan, run_volscore

    from volscore.metrics import psnr
    from volscore.options import DenoiseOptions

    init = args.init or None
    cases: dict[str, Any] = {}
    for case in load_cases(tuple(args.cases or CASES[:1]), quick=args.quick):
        r, clean = case.reference_level, case.clean
        src = tmp / f"{case.name}.nii.gz"
        sigma, noisy = noisy_scan(case, "gaussian", args.fraction, args.seed, src)
        common = dict(sigma=str(sigma), noise="gaussian", seed=args.seed, check="warn")
        rows: list[dict[str, Any]] = [{"fit": "none (noisy input)", "psnr": round(psnr(noisy, clean, r), 2)}]
        if init is not None:  # the starting model used as it is
            x, _, extra = run_volscore(src, tmp / f"tweedie_{src.name}", DenoiseOptions(run=init, **common))
            psnr_x = round(psnr(x, clean, r), 2)
            rows.append({"fit": f"none ({init}, Tweedie)", "minutes": 0.0, "psnr": psnr_x,
                         "flagged": extra["check"]["flagged"]})  # fmt: skip
        for minutes in args.minutes:
            options = DenoiseOptions(self_supervised=True, minutes=minutes, init=init, **common)
            x, rec, extra = run_volscore(src, tmp / f"fit{minutes:g}_{src.name}", options)
            rows.append({
                "fit": "fine-tuned" if init else "from scratch", "minutes": minutes,
                "fit_seconds": round(rec["timings"]["fit"], 1), "fit_steps": rec["model"]["step"],
                "psnr": round(psnr(x, clean, r), 2), "flagged": extra["check"]["flagged"],
            })  # fmt: skip
            print(rows[-1], flush=True)
        if not args.no_bm4d:  # the peer, on the same noisy volume, told the true sigma
            import bm4d
            import numpy as np

            x = np.asarray(bm4d.bm4d(noisy, sigma), np.float32)
            rows.append({"fit": "BM4D (no fit)", "psnr": round(psnr(x, clean, r), 2)})
        cases[case.name] = {"title": case.title, "fraction": args.fraction, "rows": rows}
    return {"init": init, "cases": cases}


def report(result: dict[str, Any]) -> None:
    for name, entry in result["cases"].items():
        print(f"\n**{entry['title']}** ({name}), Gaussian {entry['fraction']:g}\n")
        rows = [
            [r["fit"], r.get("minutes", ""), r.get("fit_steps", ""), f"{r['psnr']:.2f}",
             "FLAG" if r.get("flagged") else ("pass" if "flagged" in r else "")]
            for r in entry["rows"]
        ]  # fmt: skip
        print(harness.markdown_table(["fit", "minutes", "steps", "PSNR (dB)", "check"], rows))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from bench_denoise import CASES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", nargs="+", type=float, default=[2.0, 5.0, 10.0], help="fit budgets")
    p.add_argument("--init", default="pretrained:t1-denoiser", help="run to fine-tune ('' : from scratch)")
    p.add_argument("--cases", nargs="+", choices=CASES, help="scans (default: the hold-out)")
    p.add_argument("--fraction", type=float, default=0.05, help="noise sd, x the scan's reference level")
    p.add_argument("--no-bm4d", action="store_true", help="leave BM4D out (it needs the bench extra)")
    p.add_argument("--quick", action="store_true", help="central 40^3 blocks (tests)")
    harness.add_common_flags(p, threads=2)
    args = p.parse_args(argv)
    return harness.run_bench("bench_selfsup_minutes", args, lambda tmp: measure(args, tmp), report)


if __name__ == "__main__":
    main()
