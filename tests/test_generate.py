"""Tests for volscore/generate.py with the tiny runs (conftest): ``sample_run`` writes the right files per
kind (grid PNG + NPY for 2D, NIfTI + montage for a 3D patch run, a shape folder), checks every output before
sampling (the sampler is replaced by one that fails if called), records the network evaluations it made;
``run_sigmas`` honours the sampler settings; samples are seeded per sample. Few levels, small shapes."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest
import torch
from phantoms import ZOOMS

from volscore import generate
from volscore.generate import describe_record, run_sigmas, sample_images, sample_run, sample_run_tensor
from volscore.options import SampleOptions
from volscore.outputs import OutputError
from volscore.run import Run
from volscore.sampling.settings import DEFAULT_SAMPLERS, SamplerSettings
from volscore.sampling.table import DEFAULT_KARRAS_STEPS

FAST = SamplerSettings(sampler="heun", steps=3)  # 5 network evaluations per sample


class Counting:
    """A score model that counts its calls (one call = one network evaluation of the whole batch)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, *args):
        self.calls += 1
        return self.model(*args)


@pytest.fixture
def no_sampling(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("sampled although an output was refused")

    monkeypatch.setattr(generate, "sample_run_tensor", fail)


def test_mnist_run_writes_a_grid_and_its_array(tmp_path, tiny_mnist_run):
    record = sample_run(Run.load(tiny_mnist_run), SampleOptions(out=str(tmp_path / "grid"), n=3), FAST)
    png, npy = tmp_path / "grid.png", tmp_path / "grid.npy"  # the suffix added
    assert record["files"] == {"png": str(png), "npy": str(npy)}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "grid.npy",
        "grid.png",
    ]
    x = np.load(npy)
    assert x.shape == (3, 1, 28, 28) and np.isfinite(x).all()
    assert record["n"] == 3 and record["shape"] == [28, 28] and record["run"] == str(tiny_mnist_run)
    assert "3 sample(s) (28, 28)" in describe_record(record) and str(png) in describe_record(record)


def test_nifti_run_writes_a_volume_in_intensity_units_and_a_montage(tmp_path, tiny_run):
    run = Run.load(tiny_run)
    options = SampleOptions(out=str(tmp_path / "brain.nii.gz"), shape=[18, 17, 16], seed=2)
    record = sample_run(run, options, FAST)
    assert record["files"] == {"nii": str(tmp_path / "brain.nii.gz"), "png": str(tmp_path / "brain.png")}
    assert record["n"] == 1  # one volume unless --n says more
    img = nib.load(tmp_path / "brain.nii.gz")
    assert img.shape == (18, 17, 16) and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.header.get_zooms(), ZOOMS)  # the run's voxel size
    model_units = sample_run_tensor(run, FAST, 1, [18, 17, 16], seed=2, progress=False)[0, 0].numpy()
    scaler = run.scaler()
    np.testing.assert_allclose(np.asarray(img.dataobj), scaler.inverse(model_units), rtol=1e-5, atol=1e-5)
    assert (tmp_path / "brain.png").read_bytes()[:4] == b"\x89PNG"


def test_nifti_run_with_n_writes_numbered_volumes_from_one_chain(tmp_path, tiny_run):
    run = Run.load(tiny_run)
    out = tmp_path / "brains.nii.gz"
    options = SampleOptions(out=str(out), n=3, volume_batch=2, shape=[12, 12, 12], seed=4)
    record = sample_run(run, options, FAST)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"brains_{i:03d}.{ext}" for i in range(3) for ext in ("nii.gz", "png")]
    assert record["n"] == 3 and record["volume_batch"] == 2 and not out.exists()
    first = nib.load(tmp_path / "brains_000.nii.gz").get_fdata()
    alone = sample_run(run, SampleOptions(out=str(tmp_path / "one.nii.gz"), shape=[12, 12, 12], seed=4), FAST)
    assert alone["n"] == 1  # a 3D run samples one volume unless --n says more
    np.testing.assert_allclose(first, nib.load(tmp_path / "one.nii.gz").get_fdata(), atol=1e-4)
    with pytest.raises(FileExistsError, match="brains_000.nii.gz"):  # all checked before sampling
        sample_run(run, options, FAST)


def test_nifti_suffix_is_added_to_a_bare_name(tmp_path, tiny_run):
    options = SampleOptions(out=str(tmp_path / "vol"), shape=[16, 16, 16])
    record = sample_run(Run.load(tiny_run), options, FAST)
    assert set(record["files"].values()) == {str(tmp_path / "vol.nii.gz"), str(tmp_path / "vol.png")}


def test_shapes_run_writes_a_folder(tmp_path, tiny_shapes_run):
    out = tmp_path / "shapes"
    record = sample_run(Run.load(tiny_shapes_run), SampleOptions(out=str(out), n=2), FAST)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["samples.npy", "shape_000.nii.gz", "shape_001.nii.gz", "shapes.png"]
    assert set(record["files"]) == {"shape_000", "shape_001", "npy", "png"} and record["no_surface"] == []
    samples = np.load(out / "samples.npy")
    assert samples.shape == (2, 1, 16, 16, 16) and samples.min() >= 0 and samples.max() <= 1
    assert "(+ shape_*.nii.gz)" in describe_record(record)
    with pytest.raises(ValueError, match="folder"):
        sample_run(Run.load(tiny_shapes_run), SampleOptions(out=str(tmp_path / "s.nii.gz"), n=2), FAST)


@pytest.mark.reliability
def test_existing_output_is_refused_before_sampling(tmp_path, tiny_mnist_run, tiny_run, no_sampling):
    npy = tmp_path / "grid.npy"
    npy.write_bytes(b"precious")  # the grid's array exists, the PNG does not
    with pytest.raises(FileExistsError, match="--force"):
        sample_run(Run.load(tiny_mnist_run), SampleOptions(out=str(tmp_path / "grid.png")), FAST)
    assert npy.read_bytes() == b"precious" and not (tmp_path / "grid.png").exists()
    montage = tmp_path / "vol.png"
    montage.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="vol.png"):
        sample_run(Run.load(tiny_run), SampleOptions(out=str(tmp_path / "vol.nii.gz")), FAST)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        sample_run(Run.load(tiny_mnist_run), SampleOptions(out=str(tmp_path / "dir.png"), force=True), FAST)
    assert montage.read_bytes() == b"precious" and not (tmp_path / "vol.nii.gz").exists()


def test_existing_output_is_replaced_with_force(tmp_path, tiny_mnist_run):
    (tmp_path / "grid.npy").write_bytes(b"old")
    options = SampleOptions(out=str(tmp_path / "grid.png"), n=2, force=True)
    sample_run(Run.load(tiny_mnist_run), options, FAST)
    assert np.load(tmp_path / "grid.npy").shape == (2, 1, 28, 28)


def test_bad_options_are_refused_before_sampling(tmp_path, tiny_mnist_run, no_sampling):
    run = Run.load(tiny_mnist_run)
    with pytest.raises(ValueError, match="--n"):
        sample_run(run, SampleOptions(out=str(tmp_path / "g.png"), n=0), FAST)
    with pytest.raises(ValueError, match="--steps"):
        sample_run(run, SampleOptions(out=str(tmp_path / "g.png")), SamplerSettings(steps=1))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "settings",
    [
        SamplerSettings(sampler="heun", steps=3),
        SamplerSettings(sampler="edm", steps=3),
        SamplerSettings(sampler="dpm", steps=4),
        SamplerSettings(sampler="annealed", steps=3, n_steps_each=2),
        SamplerSettings(sampler="pc", steps=3, n_steps_each=1),
    ],
    ids=lambda s: s.sampler,
)
def test_record_counts_the_network_evaluations_made(tmp_path, tiny_mnist_run, settings):
    run = Run.load(tiny_mnist_run)
    run.model = counter = Counting(run.model)
    record = sample_run(run, SampleOptions(out=str(tmp_path / "g.png"), n=2), settings)
    assert record["levels"] == len(run_sigmas(run, settings)) == settings.steps
    assert record["nfe"] == counter.calls  # one batch of 2: one call per evaluation
    assert record["sampler"] == settings.sampler
    assert f"{counter.calls} network evaluations" in describe_record(record)


def test_run_sigmas_honours_the_settings(tiny_mnist_run):
    run = Run.load(tiny_mnist_run)  # trained on sigma 0.01 .. 1.0, 10 levels
    heun = run_sigmas(run, SamplerSettings(sampler="heun"))  # EDM's 18 levels over the run's range
    assert len(heun) == DEFAULT_KARRAS_STEPS
    assert float(heun[0]) == pytest.approx(1.0) and float(heun[-1]) == pytest.approx(0.01)
    default = run_sigmas(run, SamplerSettings())  # auto: MNIST's measured best, EDM's sampler at 40 levels
    assert len(default) == DEFAULT_SAMPLERS["mnist"]["steps"] == 40
    langevin = run_sigmas(run, SamplerSettings(sampler="annealed"))  # the run's 10 geometric levels
    assert len(langevin) == 10 and torch.allclose(langevin[1:] / langevin[:-1], langevin[1] / langevin[0])
    own = run_sigmas(run, SamplerSettings(sampler="pc", steps=4, sigma_max=0.5, sigma_min=0.05))
    expected = 0.5 * 0.1 ** (torch.arange(4, dtype=torch.float64) / 3)  # geometric: 0.5 .. 0.05
    torch.testing.assert_close(own.double(), expected, rtol=1e-6, atol=0)
    karras = run_sigmas(run, SamplerSettings(sampler="dpm", steps=5, sigma_max=0.8))
    assert len(karras) == 5 and float(karras[0]) == pytest.approx(0.8)
    assert float(karras[-1]) == pytest.approx(0.01)  # sigma_min not given: the run's
    assert torch.all(karras[1:] < karras[:-1])


def test_samples_are_seeded_per_sample_not_per_batch(tiny_mnist_run):
    run = Run.load(tiny_mnist_run)
    sigmas = run_sigmas(run, FAST)
    kwargs = dict(settings=FAST, sigmas=sigmas, progress=False)
    together = sample_images(run.model, 3, (1, 28, 28), seed=5, batch_size=3, **kwargs)
    in_ones = sample_images(run.model, 3, (1, 28, 28), seed=5, batch_size=1, **kwargs)
    torch.testing.assert_close(together, in_ones, atol=1e-5, rtol=1e-5)
    later = sample_images(run.model, 2, (1, 28, 28), seed=6, batch_size=2, **kwargs)
    torch.testing.assert_close(together[1:], later, atol=1e-5, rtol=1e-5)  # sample i has seed + i
    assert not torch.allclose(together[0], together[1])


@pytest.mark.parametrize("kind", ["mnist", "nifti"])
def test_bf16_sampling_runs_the_network_in_bf16_and_stays_near_fp32(
    kind, tiny_mnist_run, tiny_run, monkeypatch
):
    """--amp bf16: the network sees autocast (its convolutions return bf16), the sample is float32 and
    within bf16's rounding of the fp32 sample from the same seed, and not bit-identical to it."""
    run = Run.load(tiny_mnist_run if kind == "mnist" else tiny_run)
    shape = None if kind == "mnist" else [12, 12, 12]
    seen: list[torch.dtype] = []
    hook = run.model.net.conv_in.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    fp32 = sample_run_tensor(run, FAST, n=2, shape=shape, seed=3, progress=False)
    assert set(seen) == {torch.float32}
    seen.clear()
    bf16 = sample_run_tensor(run, FAST, n=2, shape=shape, seed=3, progress=False, amp=torch.bfloat16)
    hook.remove()
    assert set(seen) == {torch.bfloat16} and bf16.dtype == torch.float32
    diff = (bf16 - fp32).abs()
    assert 0 < float(diff.max()) < 0.05 * float(fp32.abs().max())


def test_volumes_sampled_in_one_chain_share_offsets_and_volume_0_is_the_lone_volume(tiny_run):
    """volume_batch > 1: one chain for several volumes (tiles batched together); volume 0 equals the volume
    sampled alone from the same seed, the others differ from it, and chunking covers every volume."""
    run = Run.load(tiny_run)
    kwargs = dict(shape=[12, 12, 12], seed=4, progress=False)
    alone = sample_run_tensor(run, FAST, n=1, **kwargs)
    joint = sample_run_tensor(run, FAST, n=3, volume_batch=2, **kwargs)
    assert joint.shape == (3, 1, 12, 12, 12)
    torch.testing.assert_close(joint[0], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(joint[0], joint[1]) and not torch.allclose(joint[1], joint[2])
    third = sample_run_tensor(run, FAST, n=1, **(kwargs | {"seed": 6}))
    torch.testing.assert_close(
        joint[2], third[0], atol=1e-5, rtol=1e-5
    )  # the second chain starts at seed + 2
    with pytest.raises(ValueError, match="volume_batch"):
        sample_run_tensor(run, FAST, n=2, volume_batch=0, **kwargs)


def test_sample_run_records_its_amp(tmp_path, tiny_mnist_run):
    record = sample_run(
        Run.load(tiny_mnist_run), SampleOptions(out=str(tmp_path / "g.png"), n=2, amp="bf16"), FAST
    )
    assert record["amp"] == "bf16"
    with pytest.raises(ValueError, match="amp must be one of"):
        sample_run(Run.load(tiny_mnist_run), SampleOptions(out=str(tmp_path / "h.png"), amp="fp8"), FAST)


def test_sample_run_tensor_refuses_a_shape_of_the_wrong_dimension(tiny_run, tiny_mnist_run):
    with pytest.raises(ValueError, match="3 positive sizes"):
        sample_run_tensor(Run.load(tiny_run), FAST, shape=[16, 16], progress=False)
    with pytest.raises(ValueError, match="2 positive sizes"):
        sample_run_tensor(Run.load(tiny_mnist_run), FAST, shape=[28, 28, 28], progress=False)


# -- finite in, finite out; memory refused with its estimate (#16) ------------------------------------------
class NonFinite:
    """A score model whose output is ``value`` (NaN or Inf) from its ``after``-th call on."""

    def __init__(self, model, value: float, after: int = 0):
        self.model, self.value, self.after, self.calls = model, value, after, 0

    def __call__(self, *args):
        out = self.model(*args)
        self.calls += 1
        return out if self.calls <= self.after else torch.full_like(out, self.value)


@pytest.mark.reliability
@pytest.mark.parametrize("value, after", [(float("nan"), 0), (float("inf"), 2)], ids=["nan", "inf-late"])
@pytest.mark.parametrize("kind", ["mnist", "nifti", "shapes"])
def test_non_finite_network_output_is_an_error_naming_the_run_and_nothing_is_written(
    tmp_path, tiny_mnist_run, tiny_run, tiny_shapes_run, kind, value, after
):
    spec, out, shape = {
        "mnist": (tiny_mnist_run, tmp_path / "grid.png", None),
        "nifti": (tiny_run, tmp_path / "brain.nii.gz", [16, 16, 16]),
        "shapes": (tiny_shapes_run, tmp_path / "shapes", None),
    }[kind]
    run = Run.load(spec)
    run.model = model = NonFinite(run.model, value, after)
    with pytest.raises(FloatingPointError) as info:
        sample_run(run, SampleOptions(out=str(out), n=2, shape=shape), FAST)
    message = str(info.value)
    assert str(spec) in message and "non-finite values (nothing written)" in message, message
    assert "checkpoint" in message and model.calls > after
    assert list(tmp_path.iterdir()) == []  # no grid, array, volume, montage or shape folder


@pytest.mark.reliability
def test_an_overflowing_checkpoint_is_refused_by_sample_writing_nothing(tmp_path, tiny_mnist_run):
    import shutil

    from volscore.checkpoint import load_checkpoint, save_checkpoint
    from volscore.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_mnist_run, run)
    state = load_checkpoint(run / "checkpoint.pt")
    name = "module.net.conv_out.weight"  # finite (so the load accepts it), but every output overflows
    state["ema"][name] = torch.full_like(state["ema"][name], 1e30)
    save_checkpoint(run / "checkpoint.pt", state)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "grid.png"
    with pytest.raises(FloatingPointError, match=f"{run}: the sampler produced .* non-finite values"):
        sample_run(Run.load(run), SampleOptions(out=str(out), n=2), FAST)
    assert main(["sample", "--run", str(run), "--out", str(out), "--n", "2", "--steps", "3"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no grid.png, no grid.npy


@pytest.fixture
def fixed_memory(monkeypatch):
    """The machine reports 8 GiB available, whatever it has; sampling itself fails the test if reached."""
    from volscore import machine

    monkeypatch.setattr(machine, "available_memory_bytes", lambda: 8 * 2**30)

    def fail(*args, **kwargs):
        raise AssertionError("sampling started although the request cannot fit")

    for name in ("sample_images", "sample_volumes", "run_sigmas"):
        monkeypatch.setattr(generate, name, fail)


@pytest.mark.reliability
@pytest.mark.parametrize(
    "kind, n, shape",
    [("nifti", 1, [4000, 4000, 4000]), ("mnist", 10**8, None), ("mnist", 1, [60000, 60000])],
    ids=["volume-4000^3", "1e8-images", "image-60000^2"],
)
def test_a_sample_that_cannot_fit_is_refused_with_the_estimate_before_sampling(
    tmp_path, tiny_run, tiny_mnist_run, fixed_memory, kind, n, shape
):
    run = Run.load(tiny_run if kind == "nifti" else tiny_mnist_run)
    size = shape or run.sample_shape
    need = generate.sample_memory_bytes(run, n, size)
    assert need > 8 * 2**30
    out = tmp_path / ("brain.nii.gz" if kind == "nifti" else "grid.png")
    start = time.perf_counter()
    with pytest.raises(ValueError) as info:
        sample_run(run, SampleOptions(out=str(out), n=n, shape=shape), FAST)
    assert time.perf_counter() - start < 0.5
    message = str(info.value)
    assert f"--shape {' '.join(map(str, size))}" in message, message
    assert f"about {need / 2**30:.1f} GiB" in message and "8.0 GiB available" in message, message
    assert list(tmp_path.iterdir()) == []
    # what fits is not refused by the estimate (the sampler, replaced here, is reached)
    with pytest.raises(AssertionError, match="sampling started"):
        sample_run(run, SampleOptions(out=str(out), n=1), FAST)


@pytest.mark.reliability
def test_the_memory_estimate_grows_with_the_request(tiny_run, tiny_mnist_run):
    volume, images = Run.load(tiny_run), Run.load(tiny_mnist_run)
    small, large = (generate.sample_memory_bytes(volume, 1, [s] * 3) for s in (32, 64))
    assert 4 * 32**3 * generate.SAMPLE_COPIES < small < large  # at least the chain's copies of the sample
    assert large - small >= 4 * (64**3 - 32**3) * (1 + generate.SAMPLE_COPIES)
    one, many = (generate.sample_memory_bytes(images, n, [28, 28]) for n in (1, 1000))
    assert many > 1000 * 4 * 28 * 28 > one  # every sample is kept


@pytest.mark.reliability
def test_cli_sample_of_4000_cubed_is_refused_at_once_with_the_estimate(tmp_path, tiny_run, capsys):
    from volscore import machine
    from volscore.cli import main

    if machine.available_memory_bytes() is None:
        pytest.skip("this platform reports no available memory: the estimate cannot refuse anything")
    out = tmp_path / "brain.nii.gz"
    start = time.perf_counter()
    assert main(["sample", "--run", str(tiny_run), "--out", str(out), "--shape", "4000", "4000", "4000"]) == 2
    assert time.perf_counter() - start < 5  # loading the run included; no sampling
    err = capsys.readouterr().err
    assert "--shape 4000 4000 4000: sampling needs about" in err and "GiB available" in err, err
    assert list(tmp_path.iterdir()) == []
