"""DICOM test data made at test time: a synthetic phantom in three planes, an oblique series
re-sliced from a real Siemens mosaic, and the pydicom test files, including a copy of an enhanced
multi-frame file with added geometry."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pydicom
from nibabel.nicom.dicomwrappers import wrapper_from_file
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

from mgmt_nb.data import PLANE_COSINES, Volume, write_dicom_series

TEST_PATIENT_NAME = "Test^Reader"  # fixed strings, so no identifier from a source header is copied
TEST_PATIENT_ID = "READER-TEST-0001"
PLANES = ("axial", "sagittal", "coronal")

# Synthetic phantom: anisotropic voxels, an origin off the isocentre and a blob off every midline,
# so that a swapped or flipped axis changes the voxels or the affine.
PHANTOM_SHAPE = (40, 48, 36)
PHANTOM_SPACING = (1.0, 1.25, 1.5)  # mm along x, y, z
PHANTOM_ORIGIN = (-21.0, -33.5, -10.0)  # RAS mm of voxel (0, 0, 0)
PHANTOM_BLOB_CENTRE = (28, 14, 10)  # voxel indices

# Real Siemens mosaics shipped in heudiconv's wheel: 1368x1350 pixels holding 81 tiles of 152x150
# pixels at 1.5 mm, tilted about 3 degrees from axial.
MOSAIC_FOLDER = Path(importlib.util.find_spec("heudiconv").origin).parent / "tests/data/b0dwiForFmap"

# pydicom's MR_small (one 64x64 int16 axial slice) in each transfer syntax pydicom ships it in.
MR_SMALL_FILES = (
    "MR_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",
    "MR_small_padded.dcm",  # explicit VR little endian, PixelData 128 bytes longer than the 64x64 int16 frame
    "MR_small_bigendian.dcm",  # explicit VR big endian, with a DataSetTrailingPadding element
    "MR_small_expb.dcm",  # explicit VR big endian
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
)
# Enhanced MR Image Storage, 10 frames of 64x64 uint16, from the pydicom-data package. These files
# have no functional groups, so they carry no position, orientation or pixel spacing.
EMRI_SMALL_FILES = (
    "emri_small.dcm",
    "emri_small_big_endian.dcm",
    "emri_small_RLE.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
)
EMRI_TOO_SHORT = "emri_small_jpeg_2k_lossless_too_short.dcm"  # no Rows, Columns or pixel data

# Geometry added to the enhanced copy: (row cosine, column cosine) in LPS.
ENHANCED_PIXEL_SPACING = (0.9, 0.8)  # (row spacing, column spacing) mm, unequal so a swap shows
ENHANCED_SLICE_THICKNESS = 2.0  # mm, differs from the spacing so a reader using it shows
ENHANCED_SLICE_SPACING = 2.5  # mm between frame positions
ENHANCED_FIRST_POSITION = (-40.0, 25.0, 60.0)  # LPS mm of frame 1's first pixel


def _rotation(axis: str, degrees: float) -> np.ndarray:
    "Return the 3x3 rotation matrix about one LPS axis ('x', 'y' or 'z')."
    cos, sin = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    matrices = {
        "x": [[1, 0, 0], [0, cos, -sin], [0, sin, cos]],
        "y": [[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]],
        "z": [[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]],
    }
    return np.array(matrices[axis])


_SAGITTAL_COSINES = (np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0]))
_OBLIQUE_ROTATION = _rotation("x", 25.0) @ _rotation("z", 10.0)  # a sagittal plane tilted 25 and 10 degrees
ENHANCED_ORIENTATIONS = {
    "sagittal": _SAGITTAL_COSINES,
    "oblique": tuple(_OBLIQUE_ROTATION @ cosine for cosine in _SAGITTAL_COSINES),
}


def _ds(value: float) -> str:
    "Format a number as a DICOM decimal string (at most 16 characters)."
    return format_number_as_ds(float(value))


def testdata_path(name: str) -> Path:
    "Return the path of a pydicom or pydicom-data test file, without downloading anything."
    # get_testdata_files(pattern) would also try to download every matching name from GitHub.
    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed. Install the dev requirements, which include pydicom-data.")
    return Path(path)


def phantom_volume() -> Volume:
    "Return the synthetic RAS+ phantom: a linear gradient plus a Gaussian blob off every midline."
    x, y, z = np.meshgrid(*[np.arange(size, dtype=np.float64) for size in PHANTOM_SHAPE], indexing="ij")
    gradient = 100.0 + 2.0 * x + 3.0 * y + 5.0 * z
    squared_distance = sum((axis - centre) ** 2 for axis, centre in zip((x, y, z), PHANTOM_BLOB_CENTRE))
    blob = 400.0 * np.exp(-squared_distance / (2 * 4.0**2))
    affine = np.diag([*PHANTOM_SPACING, 1.0])
    affine[:3, 3] = PHANTOM_ORIGIN
    return Volume((gradient + blob).astype(np.float32), affine, source="synthetic phantom")


def write_phantom_series(root, plane: str) -> Path:
    "Write the synthetic phantom as one `plane` series into root/plane; return the folder."
    folder = Path(root) / plane
    header = {
        "PatientName": TEST_PATIENT_NAME,
        "PatientID": TEST_PATIENT_ID,
        "SeriesDescription": f"synthetic phantom, {plane}",
    }
    write_dicom_series(phantom_volume(), folder, plane=plane, header=header)
    return folder


def mosaic_files() -> list[Path]:
    "Return the three Siemens mosaic files in heudiconv's test data."
    paths = sorted(MOSAIC_FOLDER.glob("*.dcm"))
    if len(paths) != 3:
        raise FileNotFoundError(f"expected 3 mosaic files in {MOSAIC_FOLDER}, found {len(paths)}. Install heudiconv 1.5.1.")
    return paths


def decode_mosaic(path) -> tuple[np.ndarray, np.ndarray]:
    "Decode a Siemens mosaic with nibabel; return (data, affine) with data indexed (row, column, slice)."
    wrapper = wrapper_from_file(str(path))
    # nibabel's MosaicWrapper returns the tiles as (row, column, slice). Its affine maps those
    # indices to DICOM patient coordinates (LPS mm), corrected for the mosaic position offset.
    return wrapper.get_data(), wrapper.affine


def other_orientation(dataset) -> list[float]:
    "Return the cosines of a standard plane that differs from the slice's own."
    own = np.array([float(value) for value in dataset.ImageOrientationPatient])
    for cosines in PLANE_COSINES.values():
        candidate = list(cosines[0] + cosines[1])
        if not np.allclose(candidate, own, atol=1e-3):
            return candidate
    raise AssertionError("PLANE_COSINES has no plane other than the slice's own")


def _slice_dataset(instance_uid: str) -> Dataset:
    "Return an empty MR Image Storage dataset with its file meta information."
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = MRImageStorage
    dataset.SOPInstanceUID = instance_uid
    return dataset


def write_mosaic_series(mosaic_path, root, patient: str = "00000", sequence: str = "FLAIR") -> Path:
    "Re-slice one mosaic into one file per slice at root/train/patient/sequence/Image-N.dcm; return the folder."
    data, affine = decode_mosaic(mosaic_path)
    source = pydicom.dcmread(mosaic_path, stop_before_pixels=True)
    if data.dtype != np.uint16:
        raise TypeError(f"{mosaic_path}: expected uint16 tiles, got {data.dtype}.")
    rows, columns, count = data.shape
    row_cosine = np.array([float(value) for value in source.ImageOrientationPatient[:3]])
    column_cosine = np.array([float(value) for value in source.ImageOrientationPatient[3:]])
    # The affine's slice column is the normal times the slice spacing nibabel found.
    slice_spacing = float(np.linalg.norm(affine[:3, 2]))

    folder = Path(root) / "train" / patient / sequence
    folder.mkdir(parents=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    for index in range(count):
        position = affine[:3, :3] @ [0, 0, index] + affine[:3, 3]
        dataset = _slice_dataset(generate_uid())
        dataset.Modality = "MR"
        dataset.PatientName = TEST_PATIENT_NAME
        dataset.PatientID = TEST_PATIENT_ID
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series_uid
        dataset.FrameOfReferenceUID = frame_uid
        dataset.SeriesNumber = 1
        dataset.SeriesDescription = "slices re-sliced from a Siemens mosaic"
        dataset.InstanceNumber = index + 1
        dataset.ImagePositionPatient = [_ds(value) for value in position]
        dataset.ImageOrientationPatient = [_ds(value) for value in (*row_cosine, *column_cosine)]
        dataset.PixelSpacing = [_ds(float(value)) for value in source.PixelSpacing]
        dataset.SliceThickness = _ds(float(source.SliceThickness))
        dataset.SpacingBetweenSlices = _ds(slice_spacing)
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.Rows, dataset.Columns = rows, columns
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
        dataset.PixelRepresentation = 0
        dataset.PixelData = np.ascontiguousarray(data[:, :, index], dtype="<u2").tobytes()
        # Image-1 ... Image-81 as in the RSNA-MICCAI release, where Image-10 sorts before Image-2 as text.
        dataset.save_as(folder / f"Image-{index + 1}.dcm", enforce_file_format=True)
    return folder


def write_enhanced_with_geometry(folder, orientation: str) -> Path:
    "Copy emri_small.dcm into `folder` with shared and per-frame functional groups that give it geometry."
    row_cosine, column_cosine = ENHANCED_ORIENTATIONS[orientation]
    normal = np.cross(row_cosine, column_cosine)
    dataset = pydicom.dcmread(testdata_path("emri_small.dcm"))
    dataset.PatientName = TEST_PATIENT_NAME
    dataset.PatientID = TEST_PATIENT_ID
    del dataset.SpacingBetweenSlices  # the file's top-level 1.2 mm would contradict the functional groups

    measures = Dataset()
    measures.PixelSpacing = [_ds(value) for value in ENHANCED_PIXEL_SPACING]
    measures.SliceThickness = _ds(ENHANCED_SLICE_THICKNESS)
    measures.SpacingBetweenSlices = _ds(ENHANCED_SLICE_SPACING)
    plane_orientation = Dataset()
    plane_orientation.ImageOrientationPatient = [_ds(value) for value in (*row_cosine, *column_cosine)]
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [plane_orientation]
    dataset.SharedFunctionalGroupsSequence = [shared]

    per_frame = []
    for index in range(int(dataset.NumberOfFrames)):
        position = np.array(ENHANCED_FIRST_POSITION) + index * ENHANCED_SLICE_SPACING * normal
        plane_position = Dataset()
        plane_position.ImagePositionPatient = [_ds(value) for value in position]
        frame = Dataset()
        frame.PlanePositionSequence = [plane_position]
        per_frame.append(frame)
    dataset.PerFrameFunctionalGroupsSequence = per_frame

    path = Path(folder) / f"emri_small_{orientation}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path
