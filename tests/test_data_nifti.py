"""Tests for volscore/data/nifti.py on small hand-made NIfTI files in tmp_path.

Round trips (float64 input; int16 with scl_slope/scl_inter applied on load; float32 output, same shape and
affine, no rescaling), every refused input (each VolumeError must name the file), path resolution, the
refusal to overwrite the input (directly or through a symlink), atomic writes, and the intensity scaler.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from volscore.data import nifti
from volscore.data.nifti import (
    IntensityScaler,
    VolumeError,
    describe,
    load_volume,
    resolve_paths,
    save_nifti,
    save_volume,
)

AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.5, -72], [0, 0, 0, 1]])


def _write(path, data, affine=AFFINE, header=None):
    nib.Nifti1Image(data, affine, header).to_filename(path)
    return path


def _rng():
    return np.random.default_rng(0)


@pytest.mark.reliability
def test_float64_round_trip(tmp_path):
    data = _rng().normal(size=(5, 6, 7))
    src = _write(tmp_path / "in.nii.gz", data)
    vol = load_volume(src)
    assert vol.data.dtype == np.float32 and vol.data.flags.c_contiguous and vol.data.shape == (5, 6, 7)
    np.testing.assert_allclose(vol.data, data.astype(np.float32))
    np.testing.assert_array_equal(vol.affine, AFFINE)
    assert vol.zooms == (2.0, 2.0, 2.5)

    out = tmp_path / "out.nii.gz"
    save_volume(out, vol.data * 3.0, vol)
    back = nib.load(out)
    assert back.shape == (5, 6, 7) and back.get_data_dtype() == np.float32
    np.testing.assert_array_equal(back.affine, AFFINE)
    np.testing.assert_array_equal(np.asarray(back.dataobj), vol.data * 3.0)


def test_save_volume_on_a_grid_of_its_own_writes_that_affine_and_keeps_the_header(tmp_path):
    """affine=: another shape (a finer grid), that affine in qform and sform, the reference's units kept."""
    src = _write(tmp_path / "in.nii.gz", _rng().normal(size=(5, 6, 7)))
    vol = load_volume(src)
    fine = AFFINE.copy()
    fine[:3, 2] /= 5  # five times finer along the third axis
    data = _rng().normal(size=(5, 6, 35)).astype(np.float32)
    save_volume(tmp_path / "fine.nii.gz", data, vol, affine=fine)
    back = nib.load(tmp_path / "fine.nii.gz")
    assert back.shape == (5, 6, 35)
    np.testing.assert_array_equal(back.affine, fine)
    np.testing.assert_allclose(back.header.get_qform(), fine)
    np.testing.assert_allclose(back.header.get_zooms(), (2.0, 2.0, 0.5))
    assert back.header.get_xyzt_units() == vol.header.get_xyzt_units()
    np.testing.assert_array_equal(np.asarray(back.dataobj), data)
    with pytest.raises(VolumeError, match="differs from reference"):  # without affine: the reference's grid
        save_volume(tmp_path / "wrong.nii.gz", data, vol)


@pytest.mark.reliability
@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
def test_integer_input_with_scaling_is_applied_and_not_reapplied_on_save(tmp_path, dtype):
    raw = np.arange(4 * 5 * 6, dtype=dtype).reshape(4, 5, 6) % 100
    img = nib.Nifti1Image(raw, AFFINE)
    img.header.set_data_dtype(dtype)
    img.header.set_slope_inter(2.0, 10.0)
    src = tmp_path / "int.nii.gz"
    img.to_filename(src)
    vol = load_volume(src)
    np.testing.assert_array_equal(vol.data, raw.astype(np.float32) * 2 + 10)

    # Fractional float output must come back exactly: no integer rescale, no slope applied twice.
    result = vol.data / 7.0 - 0.25
    out = tmp_path / "int_out.nii"
    save_volume(out, torch.from_numpy(result), vol)
    back = nib.load(out)
    assert back.get_data_dtype() == np.float32
    assert back.dataobj.slope == 1.0 and back.dataobj.inter == 0.0
    np.testing.assert_array_equal(np.asarray(back.dataobj), result)
    np.testing.assert_array_equal(back.affine, AFFINE)


@pytest.mark.reliability
def test_big_endian_loads_native(tmp_path):
    data = np.arange(24, dtype=">f4").reshape(2, 3, 4)
    src = _write(tmp_path / "be.nii", data, header=nib.Nifti1Header(endianness=">"))
    assert nib.load(src).header.endianness == ">"
    vol = load_volume(src)
    assert vol.data.dtype == np.dtype(np.float32) and vol.data.dtype.isnative
    np.testing.assert_array_equal(torch.from_numpy(vol.data).numpy(), np.arange(24).reshape(2, 3, 4))


@pytest.mark.reliability
def test_4d_needs_index(tmp_path):
    data = np.stack([np.full((3, 4, 5), float(t)) for t in range(3)], axis=-1)
    src = _write(tmp_path / "four.nii.gz", data)
    with pytest.raises(VolumeError, match="four.nii.gz.*volume_index"):
        load_volume(src)
    assert np.all(load_volume(src, volume_index=2).data == 2.0)
    assert np.all(load_volume(src, volume_index=-3).data == 0.0)
    with pytest.raises(VolumeError, match="four.nii.gz.*out of range"):
        load_volume(src, volume_index=3)
    # A single trailing time point is just a 3D volume.
    single = _write(tmp_path / "single.nii.gz", data[..., :1])
    assert load_volume(single).data.shape == (3, 4, 5)


def _bad_file(tmp_path, case: str):
    """(path, expected message part) for one kind of unusable input."""
    good = _write(tmp_path / "good.nii.gz", _rng().normal(size=(16, 16, 16)).astype(np.float32))
    assert len(good.read_bytes()) > 10_000  # so that half of it still holds the header
    nan = np.ones((4, 4, 4), np.float32)
    nan[1, 2, 3] = np.nan
    if case == "missing":
        return tmp_path / "missing.nii.gz", "no such file"
    if case == "random-bytes":
        path = tmp_path / "random.nii.gz"
        path.write_bytes(_rng().bytes(2000))
        return path, "not a readable NIfTI"
    if case == "gzip-of-text":
        path = tmp_path / "notnifti.nii.gz"
        path.write_bytes(gzip.compress(b"hello, not an image" * 50))
        return path, "not a readable NIfTI"
    if case == "truncated":
        path = tmp_path / "truncated.nii.gz"
        path.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
        return path, "truncated or corrupt"
    if case == "cut-header":
        path = tmp_path / "cut_header.nii.gz"
        path.write_bytes(good.read_bytes()[:100])
        return path, "not a readable NIfTI"
    if case == "2d":
        return _write(tmp_path / "flat.nii.gz", np.ones((4, 5), np.float32)), "2D image"
    if case == "zero-size":
        return _write(tmp_path / "empty.nii.gz", np.ones((4, 0, 4), np.float32)), "zero-size"
    if case == "nan":
        return _write(tmp_path / "nan.nii.gz", nan), "1 NaN voxels"
    assert case == "inf"
    return _write(tmp_path / "inf.nii", np.full((2, 2, 2), np.inf, np.float32)), "8 Inf voxels"


BAD_FILES = (
    "missing",
    "random-bytes",
    "gzip-of-text",
    "truncated",
    "cut-header",
    "2d",
    "zero-size",
    "nan",
    "inf",
)


@pytest.mark.reliability
@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_inputs_raise_volume_error_naming_the_file(tmp_path, case):
    path, problem = _bad_file(tmp_path, case)
    with pytest.raises(VolumeError) as info:
        load_volume(path)
    message = str(info.value)
    assert path.name in message, message
    assert problem in message, message


@pytest.mark.reliability
def test_wrong_extension(tmp_path):
    text = tmp_path / "scan.txt"
    text.write_text("x")
    for call in (load_volume, resolve_paths, describe):
        with pytest.raises(VolumeError, match="scan.txt.*wrong extension"):
            call(text)


@pytest.mark.reliability
def test_resolve_paths(tmp_path, monkeypatch):
    for name in ("b.nii.gz", "a.nii", "c.nii.gz"):
        _write(tmp_path / name, np.zeros((2, 2, 2), np.float32))
    (tmp_path / "notes.md").write_text("not a scan")
    assert [p.name for p in resolve_paths(tmp_path)] == ["a.nii", "b.nii.gz", "c.nii.gz"]
    assert [p.name for p in resolve_paths(str(tmp_path / "*.nii.gz"))] == ["b.nii.gz", "c.nii.gz"]
    listed = resolve_paths([tmp_path / "c.nii.gz", tmp_path / "a.nii"])
    assert [p.name for p in listed] == ["c.nii.gz", "a.nii"]  # a list keeps its order
    with pytest.raises(VolumeError, match="notes.md.*wrong extension"):
        resolve_paths(str(tmp_path / "*"))

    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(VolumeError, match="empty_dir.*no .nii"):
        resolve_paths(empty)
    with pytest.raises(VolumeError, match="nothing.*matches no files"):
        resolve_paths(str(tmp_path / "nothing*.nii.gz"))
    with pytest.raises(VolumeError, match="missing.nii.*no such file"):
        resolve_paths([tmp_path / "a.nii", tmp_path / "missing.nii"])

    assert resolve_paths("mni152")[0].name == nifti.MNI152_FILE
    monkeypatch.setenv("VOLSCORE_DATA", str(tmp_path))
    with pytest.raises(VolumeError, match="MNI152 template not found"):
        resolve_paths("mni152")
    _write(tmp_path / nifti.MNI152_FILE, np.zeros((2, 2, 2), np.float32))
    assert resolve_paths("mni152") == [tmp_path / nifti.MNI152_FILE]


@pytest.mark.reliability
def test_save_refuses_to_overwrite_the_input(tmp_path):
    src = _write(tmp_path / "in.nii.gz", np.ones((3, 3, 3), np.float32))
    before = src.read_bytes()
    vol = load_volume(src)
    link = tmp_path / "link.nii.gz"
    link.symlink_to(src)
    hard = tmp_path / "hard.nii.gz"
    os.link(src, hard)
    for out in (src, tmp_path / "." / "in.nii.gz", link, hard):
        with pytest.raises(VolumeError, match="refusing to overwrite"):
            save_volume(out, vol.data + 1, vol)
    assert src.read_bytes() == before
    # The same holds when the input itself was opened through the symlink.
    with pytest.raises(VolumeError, match="refusing"):
        save_volume(src, vol.data, load_volume(link))


def test_save_checks_shape_and_extension(tmp_path):
    vol = load_volume(_write(tmp_path / "in.nii.gz", np.ones((3, 3, 3), np.float32)))
    with pytest.raises(VolumeError, match="out.nii.gz.*shape"):
        save_volume(tmp_path / "out.nii.gz", np.ones((3, 3, 4)), vol)
    with pytest.raises(VolumeError, match="out.npy.*wrong extension"):
        save_volume(tmp_path / "out.npy", vol.data, vol)
    with pytest.raises(VolumeError, match="does not exist"):
        save_volume(tmp_path / "nodir" / "out.nii.gz", vol.data, vol)


@pytest.mark.reliability
def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    vol = load_volume(_write(tmp_path / "in.nii.gz", np.ones((3, 3, 3), np.float32)))
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"previous result")

    def broken_save(img, filename):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    listing = sorted(os.listdir(tmp_path))
    for call in (lambda: save_volume(out, vol.data, vol), lambda: save_nifti(tmp_path / "new.nii", vol.data)):
        with pytest.raises(VolumeError, match="write failed.*disk full"):
            call()
    assert sorted(os.listdir(tmp_path)) == listing  # no temporary left, no new file
    assert out.read_bytes() == b"previous result"


def test_save_nifti(tmp_path):
    data = _rng().normal(size=(4, 5, 6)).astype(np.float32)
    save_nifti(tmp_path / "sample.nii.gz", torch.from_numpy(data), AFFINE)
    back = nib.load(tmp_path / "sample.nii.gz")
    assert back.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(back.dataobj), data)
    np.testing.assert_array_equal(back.affine, AFFINE)
    save_nifti(tmp_path / "eye.nii", data)
    np.testing.assert_array_equal(nib.load(tmp_path / "eye.nii").affine, np.eye(4))


def test_describe(tmp_path):
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    data[0, 0, 0] = np.nan
    text = describe(_write(tmp_path / "d.nii.gz", data))
    for part in ("d.nii.gz", "3 x 4 x 5", "2 x 2 x 2.5", "LAS", "float32", "max 59", "1 NaN, 0 Inf"):
        assert part in text, text


def test_bundled_template():
    vol = load_volume(resolve_paths("mni152")[0])
    assert vol.shape == (197, 233, 189)
    assert "".join(nib.aff2axcodes(vol.affine)) == "RAS"
    assert vol.data.min() == 0 and vol.data.max() == 255


def test_intensity_scaler():
    x = _rng().gamma(2.0, 50.0, size=(20, 20, 20)).astype(np.float32)
    scaler = IntensityScaler.fit(x)
    assert scaler.lo == pytest.approx(np.percentile(x, 0.5))
    assert scaler.hi == pytest.approx(np.percentile(x, 99.5))
    y = scaler.forward(x)
    assert y.dtype == np.float32
    assert abs(np.percentile(y, 0.5)) < 1e-5 and abs(np.percentile(y, 99.5) - 1) < 1e-5
    np.testing.assert_allclose(scaler.inverse(y), x, rtol=1e-5, atol=1e-4)
    t = torch.from_numpy(x)
    torch.testing.assert_close(scaler.inverse(scaler.forward(t)), t, rtol=1e-5, atol=1e-4)
    again = IntensityScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert again == scaler

    with pytest.raises(ValueError, match="constant image"):
        IntensityScaler.fit(np.full((4, 4, 4), 3.0))
    with pytest.raises(ValueError, match="NaN"):
        IntensityScaler.fit(np.array([1.0, np.nan, 2.0]))


@pytest.mark.reliability
@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc (unwritable even for root)")
def test_output_folder_not_writable_is_a_clear_error(tmp_path):
    # /proc refuses new files even to root, so this runs under CI's root user too (chmod would not)
    vol = load_volume(_write(tmp_path / "in.nii.gz", np.ones((3, 3, 3), np.float32)))
    with pytest.raises(VolumeError, match=r"/proc/out.nii.gz: write failed"):
        save_volume("/proc/out.nii.gz", vol.data, vol)
    assert not Path("/proc/out.nii.gz").exists()


# -- intake checks on damaged headers (#16) ------------------------------------------------------------------
# Byte offsets of NIfTI-1 header fields (little-endian files, as nibabel writes them here).
DIM, DATATYPE, BITPIX, VOX_OFFSET = 40, 70, 72, 108


def _patched(path, *fields):
    """``path`` with header fields overwritten: each field is (byte offset, struct format, values...)."""
    block = bytearray(path.read_bytes())
    for offset, fmt, *values in fields:
        struct.pack_into("<" + fmt, block, offset, *values)
    path.write_bytes(bytes(block))
    return path


def _damaged(tmp_path, case: str):
    """(path, expected message part) for a file whose header promises what volscore must not read."""
    path = _write(tmp_path / f"{case}.nii", _rng().normal(size=(8, 8, 8)).astype(np.float32))
    assert path.stat().st_size == 352 + 8**3 * 4
    if case == "huge-dims":  # 30000^3 float32: 108 TB promised by a 2 kB file
        return _patched(path, (DIM, "4h", 3, 30000, 30000, 30000)), "the file holds 2,400"
    if case == "huge-dims-gz":  # the same inside gzip: bounded by deflate's best ratio, never decompressed
        gz = tmp_path / "huge-dims.nii.gz"
        gz.write_bytes(gzip.compress(_patched(path, (DIM, "4h", 3, 30000, 30000, 30000)).read_bytes()))
        path.unlink()
        return gz, "holds at most"
    if case == "one-slice-short":  # one slice of voxels more than the file holds
        return _patched(path, (DIM, "4h", 3, 8, 8, 9)), "8 x 8 x 9 voxels of float32"
    if case == "complex64":
        return _patched(path, (DATATYPE, "2h", 32, 64)), "complex64 data"
    if case == "binary":
        return _patched(path, (DATATYPE, "2h", 1, 1)), "1-bit (binary) data"
    if case == "unknown-type":
        return _patched(path, (DATATYPE, "h", 999)), "datatype code 999"
    if case == "offset-zero":  # the data would start inside the header
        return _patched(path, (VOX_OFFSET, "f", 0.0)), "vox_offset 0 points into the header"
    if case == "offset-in-header":
        return _patched(path, (VOX_OFFSET, "f", 100.0)), "vox offset 100 too low"
    if case == "offset-negative":
        return _patched(path, (VOX_OFFSET, "f", -16.0)), "too low"
    assert case == "offset-past-end"
    return _patched(path, (VOX_OFFSET, "f", 4096.0)), "but the file holds 2,400"


DAMAGED = (
    "huge-dims",
    "huge-dims-gz",
    "one-slice-short",
    "complex64",
    "binary",
    "unknown-type",
    "offset-zero",
    "offset-in-header",
    "offset-negative",
    "offset-past-end",
)


@pytest.mark.reliability
@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_headers_are_refused_before_any_data_are_read(tmp_path, monkeypatch, case):
    path, problem = _damaged(tmp_path, case)

    def no_read(*args, **kwargs):
        raise AssertionError("data read although the header should have been refused")

    monkeypatch.setattr(nifti, "_read", no_read)
    start = time.perf_counter()
    with pytest.raises(VolumeError) as info:
        load_volume(path)
    assert time.perf_counter() - start < 0.5  # nothing allocated for the 108 TB, nothing decompressed
    message = str(info.value)
    assert str(path) in message and problem in message, message
    # `volscore info` describes what it can and says why the data are refused, naming the file either way
    try:
        text = describe(path)
    except VolumeError as exc:
        assert str(path) in str(exc) and problem in str(exc)
    else:
        assert str(path) in text and "data:          refused: " in text and problem in text, text


@pytest.mark.reliability
@pytest.mark.parametrize("kind", ["complex64", "complex128", "rgb24", "rgba32"])
def test_non_scalar_voxel_types_written_by_nibabel_are_refused_by_name(tmp_path, kind):
    shape = (4, 4, 4)
    if kind.startswith("complex"):
        data = (_rng().normal(size=shape) + 1j).astype(kind)
        name = kind
    else:
        channels = "RGB" if kind == "rgb24" else "RGBA"
        data = np.zeros(shape, dtype=[(c, "u1") for c in channels])
        name = channels
    path = _write(tmp_path / f"{kind}.nii.gz", data)
    assert nib.load(path).get_data_dtype() == data.dtype  # nibabel stores them as such
    with pytest.raises(VolumeError, match=rf"{kind}\.nii\.gz: {name} data: volscore reads real scalar"):
        load_volume(path)


@pytest.mark.reliability
def test_4d_volume_index_counts_from_the_end_and_skips_singleton_dimensions(tmp_path):
    data = np.stack([np.full((3, 4, 5), 10.0 * t) for t in range(4)], axis=-1)
    src = _write(tmp_path / "series.nii", data)
    assert np.all(load_volume(src, volume_index=0).data == 0.0)
    assert np.all(load_volume(src, volume_index=-1).data == 30.0)  # the last
    assert np.all(load_volume(src, volume_index=-4).data == 0.0)
    for index in (4, -5, 100):
        with pytest.raises(
            VolumeError, match=rf"series.nii: volume_index {index} out of range for 4 volumes"
        ):
            load_volume(src, volume_index=index)
    # a singleton 4th dimension and the volumes in the 5th: the index picks among the 5th
    five = _write(tmp_path / "five.nii.gz", data[:, :, :, None, :])
    assert nib.load(five).shape == (3, 4, 5, 1, 4)
    assert np.all(load_volume(five, volume_index=-2).data == 20.0)
    with pytest.raises(VolumeError, match="five.nii.gz: 4D image with 4 volumes"):
        load_volume(five)
    # a 3D file ignores the index; describe says which volume its intensities are of
    assert load_volume(_write(tmp_path / "three.nii", data[..., 0]), volume_index=3).shape == (3, 4, 5)
    text = describe(src, volume_index=-1)
    assert "volume:        -1" in text and "min 30, max 30" in text, text
    assert "volume_index 7 out of range" in describe(src, volume_index=7)
