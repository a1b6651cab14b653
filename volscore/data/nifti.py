"""NIfTI volumes in and out: find files, read as float32, scale intensities, write back atomically.

Volumes are kept in their on-disk voxel order (no reorientation), so whatever is written back with
`save_volume` lines up with the input voxel for voxel, with the input affine and header.

What volscore accepts is decided here, before any data are read (`_check_intake`): real scalar voxels
(integers or floats; complex, RGB(A) and 1-bit data are refused by name), a data offset past the header of a
single-file NIfTI, a header whose promised data the file can hold (checked against the file size, or the
gzip stream, without allocating), and a volume that fits in the memory available. Integers beyond float32's
24-bit mantissa are converted through float64 and a rounding warning (`VolumeWarning`) says by how much.
"""

from __future__ import annotations

import glob
import gzip
import math
import os
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.spatialimages import HeaderDataError

from volscore.atomic import atomic_write
from volscore.data import data_dir

MNI152_FILE = "mni152_2009a_sym_t1_1mm.nii.gz"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# What a damaged file raises, and only once its data are read: gzip/zlib for a truncated .gz,
# EOFError/ValueError for short data blocks, ImageFileError for a file nibabel cannot identify,
# HeaderDataError for a header nibabel refuses (an unsupported data type, an impossible offset).
_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    nib.filebasedimages.ImageFileError,
    HeaderDataError,
)
# The first data byte of a single-file NIfTI (magic n+1 / n+2) lies past its 348 / 540-byte header.
SINGLE_FILE_MIN_OFFSET = {b"n+1": 352, b"n+2": 540}
DEFLATE_MAX_RATIO = 1032  # deflate's best case: a gzip file holds at most about 1032 x its size of data
FLOAT32_EXACT = 2**24  # integers up to this magnitude are exact in float32 (24-bit mantissa)


class VolumeError(ValueError):
    """A volume file that cannot be used; the message names the file and the problem."""


class VolumeWarning(UserWarning):
    """A volume read with a loss the user should know about (integers rounded to float32)."""


@dataclass
class Volume:
    """One 3D scan: float32 voxels in on-disk order, plus what is needed to write results back."""

    data: np.ndarray  # (X, Y, Z) float32, C-contiguous, native byte order
    affine: np.ndarray  # (4, 4) voxel -> world (mm)
    header: Any  # a copy of the nibabel header (Nifti1Header or Nifti2Header)
    path: Path

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def zooms(self) -> tuple[float, ...]:
        return tuple(float(z) for z in self.header.get_zooms()[:3])


def _has_nifti_suffix(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _check_file(path: Path) -> Path:
    if not _has_nifti_suffix(path):
        raise VolumeError(f"{path}: wrong extension, expected one of {', '.join(NIFTI_SUFFIXES)}")
    if not path.exists():
        raise VolumeError(f"{path}: no such file")
    if not path.is_file():
        raise VolumeError(f"{path}: not a regular file")
    return path


def resolve_paths(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Turn a folder, a glob, a file, a list of those, or "mni152" into a list of NIfTI files.

    A folder gives all its `*.nii`/`*.nii.gz` files, sorted; a glob gives its sorted matches, each of
    which must be a NIfTI file; "mni152" is the bundled template (folder overridable by $VOLSCORE_DATA).
    """
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise VolumeError("no input volumes given (empty list)")
        return [path for item in spec for path in resolve_paths(item)]
    text = os.fspath(spec)
    if text == "mni152":
        path = data_dir() / MNI152_FILE
        if not path.is_file():
            raise VolumeError(f"{path}: bundled MNI152 template not found (set VOLSCORE_DATA to its folder)")
        return [path]
    path = Path(text).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and _has_nifti_suffix(p))
        if not found:
            raise VolumeError(f"{path}: folder holds no .nii or .nii.gz files")
        return found
    if any(c in text for c in "*?["):
        matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(text)))
        if not matches:
            raise VolumeError(f"{text}: glob matches no files")
        return [_check_file(m) for m in matches]
    return [_check_file(path)]


def _open(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI image without memory-mapping (writing over a mapped input would destroy it)."""
    _check_file(path)
    try:
        img = nib.load(path, mmap=False)
    except _READ_ERRORS as exc:
        unsupported = _unsupported_type(path) if isinstance(exc, HeaderDataError) else None
        if unsupported:
            raise VolumeError(_type_message(path, unsupported)) from exc
        raise VolumeError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise VolumeError(f"{path}: not a NIfTI image (nibabel read it as {type(img).__name__})")
    return img


def _type_name(code: int) -> str:
    if code == 1:
        return "1-bit (binary)"
    return str(nib.nifti1.data_type_codes.label.get(code, f"datatype code {code}"))


def _unsupported_type(path: Path) -> str | None:
    """The name of the data type in a header nibabel refused to open, if that type is the reason (1-bit)."""
    try:
        with nib.openers.ImageOpener(path) as f:
            header = nib.Nifti1Header.from_fileobj(f, check=False)
        code = int(header["datatype"])
    except Exception:  # not even a raw header: the generic message says enough
        return None
    return _type_name(code) if code not in nib.nifti1.data_type_codes.code or code == 1 else None


def _type_message(path: Path, name: str) -> str:
    return (
        f"{path}: {name} data: volscore reads real scalar intensities (integer or floating point voxels); "
        "convert the image first (e.g. the magnitude of complex data, one grey value per colour voxel)"
    )


def _check_intake(img: nib.Nifti1Image, path: Path, voxels: int) -> None:
    """Refuse, before reading, what volscore does not read: a voxel type that is not one real number, a data
    offset inside the header, a header promising more data than the file holds, or ``voxels`` (those that
    will be read) needing more memory than there is."""
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "iuf":  # RGB/RGBA records, complex, bool
        raise VolumeError(_type_message(path, _type_name(int(img.header["datatype"]))))
    shape = tuple(int(n) for n in img.shape)
    offset = int(img.dataobj.offset)
    minimum = SINGLE_FILE_MIN_OFFSET.get(bytes(img.header["magic"]).rstrip(b"\0"), 0)
    if offset < minimum:
        raise VolumeError(
            f"{path}: vox_offset {offset} points into the header (data of a single-file NIfTI start at byte "
            f">= {minimum}); the header is damaged"
        )
    need = offset + math.prod(shape) * dtype.itemsize
    have, bound = _data_bytes(path, need)
    if have < need:
        raise VolumeError(
            f"{path}: the header promises {' x '.join(map(str, shape))} voxels of {dtype.name} "
            f"({need:,} bytes with the header) but the file holds {'at most ' if bound else ''}{have:,}: "
            "truncated, or a damaged header"
        )
    from volscore.machine import available_memory_bytes

    # nibabel reads the stored type, then converts; wide integers go through float64 (_read)
    per_voxel = dtype.itemsize + 4 + (8 if dtype.kind in "iu" and dtype.itemsize >= 4 else 0)
    available = available_memory_bytes()
    if available is not None and voxels * per_voxel > available:
        raise VolumeError(
            f"{path}: reading {' x '.join(map(str, shape))} voxels of {dtype.name} needs about "
            f"{voxels * per_voxel / 2**30:.1f} GiB of memory, {available / 2**30:.1f} GiB available"
        )


def _data_bytes(path: Path, need: int) -> tuple[int, bool]:
    """(bytes the file holds, decompressed for .nii.gz, whether that is only an upper bound), looked at only
    as far as ``need``: the file size; for gzip, deflate's largest ratio, then the gzip trailer (the size of
    the last member mod 2^32), and only when neither settles it, the stream itself decompressed and counted
    in chunks without keeping them."""
    size = path.stat().st_size
    if not path.name.lower().endswith(".gz"):
        return size, False
    if size * DEFLATE_MAX_RATIO < need:
        return size * DEFLATE_MAX_RATIO, True
    with open(path, "rb") as f:
        f.seek(max(0, size - 4))
        last_member = int.from_bytes(f.read(4), "little")
    if need < 2**32 and last_member >= need:
        return last_member, False  # the whole stream holds at least its last member
    count = 0
    try:
        with gzip.open(path, "rb") as g:
            while count < need and (chunk := g.read(1 << 24)):
                count += len(chunk)
    except (OSError, EOFError, zlib.error):  # truncated or corrupt: what could be read is what it holds
        pass
    return count, False


def _read(img: nib.Nifti1Image, path: Path, index: tuple | slice = ()) -> np.ndarray:
    """Read (part of) the data as native float32 with scl_slope/scl_inter applied."""
    try:
        proxy = img.dataobj[index] if index != () else img.dataobj
        dtype = img.get_data_dtype()
        if dtype.kind in "iu" and dtype.itemsize >= 4:
            return _read_wide_integers(img, path, proxy)
        # dtype=np.float32 is native-endian, so big-endian files are byte-swapped here.
        return np.ascontiguousarray(np.asarray(proxy, dtype=np.float32))
    except _READ_ERRORS as exc:
        raise VolumeError(f"{path}: truncated or corrupt data ({type(exc).__name__}: {exc})") from exc
    except MemoryError as exc:
        raise VolumeError(f"{path}: not enough memory to read its data") from exc


def _read_wide_integers(img: nib.Nifti1Image, path: Path, proxy: Any) -> np.ndarray:
    """(u)int32/64 data: nibabel gives the integers, or float64 when scaled; converted to float32 here, with a
    ``VolumeWarning`` if the stored integers exceed float32's exact range and were rounded."""
    wide = np.asarray(proxy)
    data = np.ascontiguousarray(wide, dtype=np.float32)
    if wide.size == 0:
        return data
    slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)
    largest = max(abs((float(wide.min()) - inter) / slope), abs((float(wide.max()) - inter) / slope))
    if largest > FLOAT32_EXACT:
        change = float(np.abs(data.astype(np.float64) - wide).max())
        if change > 0:
            warnings.warn(
                f"{path}: {img.get_data_dtype().name} values up to {largest:.0f} exceed float32's exact "
                f"integers (2^24); read as float32, rounded by up to {change:g}",
                VolumeWarning,
                stacklevel=3,
            )
    return data


def _volume_slicer(path: Path, shape: tuple[int, ...], volume_index: int | None) -> tuple:
    """The index of volume ``volume_index`` of a 4D image (the one non-singleton dimension past the third
    takes it, singletons take 0); () for a 3D image, whose only volume is read whatever the index."""
    extra = [n for n in shape[3:] if n != 1]
    if not extra:
        return ()
    n_volumes = extra[0]
    if volume_index is None:
        raise VolumeError(
            f"{path}: 4D image with {n_volumes} volumes; choose one with volume_index (--volume-index)"
        )
    if not -n_volumes <= volume_index < n_volumes:
        raise VolumeError(f"{path}: volume_index {volume_index} out of range for {n_volumes} volumes")
    return (slice(None),) * 3 + tuple(0 if n == 1 else volume_index % n_volumes for n in shape[3:])


def load_volume(path: str | os.PathLike, volume_index: int | None = None) -> Volume:
    """Read one 3D volume as float32; a 4D file needs `volume_index`.

    Non-finite voxels are refused rather than silently masked: one NaN makes every percentile (and
    thus the intensity scaling) NaN, and guessing a fill value would change the data behind the user's back.
    """
    path = Path(path).expanduser()
    img = _open(path)
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 3:
        raise VolumeError(f"{path}: {len(shape)}D image of shape {shape}, expected a 3D volume")
    if 0 in shape:
        raise VolumeError(f"{path}: zero-size dimension in shape {shape}")
    # Trailing singleton dimensions (e.g. a 4D file with one time point) are harmless.
    core = shape[:3] + tuple(n for n in shape[3:] if n != 1)
    if len(core) > 4:
        raise VolumeError(f"{path}: {len(shape)}D image of shape {shape}, expected 3D or 4D")
    _check_intake(img, path, math.prod(shape[:3]))
    index = _volume_slicer(path, shape, volume_index)
    if index:
        data = _read(img, path, index)
    else:
        data = _read(img, path).reshape(shape[:3])
    if not np.isfinite(data).all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(np.isinf(data).sum())
        raise VolumeError(
            f"{path}: {n_nan} NaN voxels; {n_inf} Inf voxels; volscore refuses non-finite data rather "
            "than silently masking it (replace them first, e.g. with np.nan_to_num)"
        )
    affine = np.array(img.affine, dtype=np.float64)
    return Volume(data=data, affine=affine, header=img.header.copy(), path=path)


PERCENTILE_SAMPLE = 1 << 22  # voxels IntensityScaler.fit looks at, at most


@dataclass
class IntensityScaler:
    """Robust linear scaling: the `lower`/`upper` percentiles of the training data map to 0 and 1.

    No clipping, so `inverse(forward(x)) == x` and outputs return to input units; values beyond the
    percentiles land slightly outside [0, 1]. Plain floats, so `to_dict()` goes into JSON or a checkpoint.
    """

    lo: float
    hi: float
    lower: float = 0.5
    upper: float = 99.5

    @classmethod
    def fit(cls, data: Any, lower: float = 0.5, upper: float = 99.5) -> IntensityScaler:
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
        values = np.asarray(data.detach().cpu() if hasattr(data, "detach") else data, dtype=np.float32)
        if values.size == 0:
            raise ValueError("cannot fit an intensity scaler to an empty array")
        if not np.isfinite(values).all():
            raise ValueError("cannot fit an intensity scaler: data contain NaN or Inf")
        flat = values.reshape(-1)
        if flat.size > PERCENTILE_SAMPLE:
            # np.percentile copies its input; a regular subsample of a few million voxels gives the same
            # percentiles to a fraction of a grey level without a second volume-sized array in memory.
            flat = flat[:: -(-flat.size // PERCENTILE_SAMPLE)]
        lo, hi = (float(v) for v in np.percentile(flat, [lower, upper]))
        if hi <= lo:
            vmin, vmax = float(values.min()), float(values.max())
            if vmin == vmax:
                raise ValueError(f"constant image (every voxel is {vmin}): nothing to scale")
            raise ValueError(
                f"percentiles {lower} and {upper} are both {lo} (intensity range {vmin}..{vmax}): "
                "choose wider percentiles"
            )
        return cls(lo=lo, hi=hi, lower=float(lower), upper=float(upper))

    def forward(self, x: Any) -> Any:
        """Input units -> scaled units (works on numpy arrays and tensors alike)."""
        return (x - self.lo) / (self.hi - self.lo)

    def forward_(self, x: np.ndarray) -> np.ndarray:
        """``forward`` in place on a writable float array (no second volume in memory); returns it."""
        x -= self.lo
        x /= self.hi - self.lo
        return x

    def inverse(self, y: Any) -> Any:
        """Scaled units -> input units."""
        return y * (self.hi - self.lo) + self.lo

    def to_dict(self) -> dict[str, float]:
        return {"lo": self.lo, "hi": self.hi, "lower": self.lower, "upper": self.upper}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IntensityScaler:
        return cls(**{k: float(d[k]) for k in ("lo", "hi", "lower", "upper") if k in d})


def _nifti_suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"


def _atomic_save(img: nib.Nifti1Image, out: Path) -> None:
    """Write to a temporary file beside `out`, then rename: readers never see a half-written file."""
    if not _has_nifti_suffix(out):
        raise VolumeError(f"{out}: wrong extension, expected one of {', '.join(NIFTI_SUFFIXES)}")
    if not out.parent.is_dir():
        raise VolumeError(f"{out}: output folder {out.parent} does not exist")
    # nibabel picks compression from the suffix; atomic_write's temporary name keeps it.
    try:
        atomic_write(out, lambda tmp: nib.save(img, tmp))
    except Exception as exc:
        raise VolumeError(f"{out}: write failed ({type(exc).__name__}: {exc})") from exc


def _as_float32(data: Any) -> np.ndarray:
    if hasattr(data, "detach"):  # torch tensor
        data = data.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(data, dtype=np.float32))


def same_file(a: Path, b: Path) -> bool:
    """True if `a` and `b` are one file on disk, through symlinks and hard links."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass  # `a` does not exist yet (or `b` is gone): compare the resolved names instead
    return a.resolve() == b.resolve()


def save_volume(
    path: str | os.PathLike, data: Any, reference: Volume, affine: np.ndarray | None = None
) -> None:
    """Write `data` (same shape as `reference`) as float32 NIfTI with the reference's affine and header.

    The header is copied, its data type set to float32 and scl_slope/scl_inter reset, so that float output
    is never silently rescaled to the input's integer type. Refuses to overwrite the reference file. With
    ``affine``, `data` lies on a grid of its own (any shape, e.g. a super-resolved scan): that affine goes
    into the qform and sform (with the reference's codes, or 1 where it had none) and sets the voxel sizes.
    """
    out = Path(path).expanduser()
    if same_file(out, reference.path):
        raise VolumeError(f"{out}: refusing to overwrite the input volume {reference.path}")
    array = _as_float32(data)
    if affine is None and array.shape != reference.data.shape:
        raise VolumeError(f"{out}: data shape {array.shape} differs from reference {reference.data.shape}")
    header = reference.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = image_class(array, reference.affine if affine is None else affine, header)
    img.header.set_slope_inter(1.0, 0.0)
    if affine is not None:
        img.set_qform(affine, int(header["qform_code"]) or 1)
        img.set_sform(affine, int(header["sform_code"]) or 1)
    _atomic_save(img, out)


def save_nifti(path: str | os.PathLike, data: Any, affine: np.ndarray | None = None) -> None:
    """Write a generated array (e.g. a sample) as float32 NIfTI, atomically; identity affine by default."""
    array = _as_float32(data)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(np.float32)
    img.header.set_slope_inter(1.0, 0.0)
    _atomic_save(img, Path(path).expanduser())


def check_volume_output(
    output: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (), force: bool = False
) -> Path:
    """What `save_volume` would refuse, refused before any work: a name without a NIfTI suffix, one of the
    ``inputs`` (through links and case too: ``outputs.check_outputs``), a missing folder, an existing file
    without ``force``. Returns the output path."""
    from volscore.outputs import check_outputs

    out = Path(output).expanduser()
    if not _has_nifti_suffix(out):
        raise VolumeError(f"{out}: wrong extension, expected one of {', '.join(NIFTI_SUFFIXES)}")
    for src in inputs:
        if Path(src).exists() and same_file(out, Path(src)):
            raise VolumeError(f"{out}: refusing to overwrite the input volume {src}")
    if not out.parent.is_dir():
        raise VolumeError(f"{out}: output folder {out.parent} does not exist")
    check_outputs([out], inputs=inputs, force=force)
    return out


def describe(path: str | os.PathLike, volume_index: int | None = None) -> str:
    """A short human-readable summary of a NIfTI file (for `volscore info FILE`); never refuses NaNs. The
    intensities are those of the whole file, or of volume ``volume_index`` of a 4D file."""
    path = Path(path).expanduser()
    img = _open(path)
    header = img.header
    shape = tuple(int(n) for n in img.shape)
    zooms = tuple(float(z) for z in header.get_zooms())
    space_unit = header.get_xyzt_units()[0]
    try:
        orientation = "".join(nib.aff2axcodes(img.affine))
    except Exception:  # degenerate affine: report it rather than fail
        orientation = "unknown"
    slope, inter = img.dataobj.slope, img.dataobj.inter
    lines = [
        f"file:          {path}",
        f"format:        {type(img).__name__}",
        f"shape:         {' x '.join(map(str, shape))}",
        f"voxel spacing: {' x '.join(f'{z:g}' for z in zooms[:3])} ({space_unit})",
        f"orientation:   {orientation}",
        f"dtype on disk: {img.get_data_dtype()} (scl_slope {slope:g}, scl_inter {inter:g})",
    ]
    if 0 in shape:
        lines.append("intensity:     (empty image)")
        return "\n".join(lines)
    try:
        index = _volume_slicer(path, shape, volume_index) if volume_index is not None else ()
        if index:
            lines.append(f"volume:        {volume_index} (intensities below are of this volume)")
        _check_intake(img, path, math.prod(shape[:3]) if index else math.prod(shape))
        data = _read(img, path, index)
    except VolumeError as exc:  # the header is described above; say why the data are not
        lines.append(f"data:          refused: {str(exc).removeprefix(f'{path}: ')}")
        return "\n".join(lines)
    n_nan, n_inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
    finite = data[np.isfinite(data)] if n_nan or n_inf else data.ravel()
    if finite.size:
        p = np.percentile(finite, [0.5, 50.0, 99.5])
        lines.append(
            f"intensity:     min {finite.min():g}, max {finite.max():g}, "
            f"p0.5 {p[0]:g}, median {p[1]:g}, p99.5 {p[2]:g}"
        )
    else:
        lines.append("intensity:     no finite voxels")
    lines.append(f"non-finite:    {n_nan} NaN, {n_inf} Inf voxels")
    return "\n".join(lines)
