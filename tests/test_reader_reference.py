"""read_volume against SimpleITK 2.5.7 (ITK's GDCM reader) and nibabel, voxel for voxel and affine
for affine, on synthetic series, a series re-sliced from a real Siemens mosaic and pydicom's test files."""
import itertools
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from nibabel import orientations as nio
from nibabel.nicom.dicomwrappers import wrapper_from_file

import dicom_fixtures as fixtures
from mgmt_nb.core import MGMTDataError
from mgmt_nb.data import Volume, read_volume

VOXEL_TOLERANCE = 1e-5  # fraction of the reference intensity range, for float references
AFFINE_TOLERANCE = 1e-3  # mm
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def simpleitk_as_ras(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    "Return a SimpleITK image as (float32 data indexed (x, y, z), 4x4 voxel -> RAS mm affine), reoriented to RAS+."
    # DICOMOrient's string names the direction each axis increases towards, as nibabel's axis codes
    # do, so "RAS" gives nibabel's RAS+ array order. The assert below checks that on every image.
    oriented = sitk.DICOMOrient(image, "RAS")
    data = np.transpose(sitk.GetArrayFromImage(oriented), (2, 1, 0))  # SimpleITK arrays are (z, y, x)
    direction = np.array(oriented.GetDirection()).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * np.array(oriented.GetSpacing())  # scales column j by spacing j
    affine_lps[:3, 3] = oriented.GetOrigin()
    affine = LPS_TO_RAS @ affine_lps
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    return data, affine


def simpleitk_series(folder) -> sitk.Image:
    "Read a series folder with SimpleITK, ordering files by GDCM's series sort."
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def assert_same_voxels(actual: Volume, expected: np.ndarray) -> None:
    "Assert float32 voxels equal to `expected`: exactly for integer references, else within the tolerance."
    assert actual.data.dtype == np.float32
    assert actual.data.shape == expected.shape
    if np.issubdtype(expected.dtype, np.integer):
        np.testing.assert_array_equal(actual.data, expected.astype(np.float32))
    else:
        # SimpleITK rescales in float64 and the reader in float32, so the last bits may differ.
        value_range = float(expected.max() - expected.min()) or 1.0
        np.testing.assert_allclose(actual.data, expected, rtol=0, atol=VOXEL_TOLERANCE * value_range)


def assert_same_affine(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, rtol=0, atol=AFFINE_TOLERANCE)


def find_axis_transform(data: np.ndarray, reference: np.ndarray) -> np.ndarray | None:
    "Return the nibabel orientation (axis permutation and flips) that maps `data` exactly onto `reference`, or None."
    for permutation in itertools.permutations(range(3)):
        for flips in itertools.product((1, -1), repeat=3):
            transform = np.column_stack([permutation, flips])
            candidate = nio.apply_orientation(data, transform)
            if candidate.shape == reference.shape and np.array_equal(candidate, reference):
                return transform
    return None


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory) -> dict:
    "The synthetic phantom written as one axial, one sagittal and one coronal series."
    root = tmp_path_factory.mktemp("phantom")
    return {plane: fixtures.write_phantom_series(root, plane) for plane in fixtures.PLANES}


@pytest.fixture(scope="module")
def mosaic_series(tmp_path_factory):
    "The first heudiconv mosaic re-sliced into Image-1.dcm ... Image-81.dcm in the RSNA-MICCAI layout."
    root = tmp_path_factory.mktemp("rsna")
    return fixtures.write_mosaic_series(fixtures.mosaic_files()[0], root)


@pytest.fixture(scope="module")
def enhanced_files(tmp_path_factory) -> dict:
    "emri_small.dcm copies with functional-group geometry, one per orientation."
    folder = tmp_path_factory.mktemp("enhanced")
    return {name: fixtures.write_enhanced_with_geometry(folder, name) for name in fixtures.ENHANCED_ORIENTATIONS}


# Series folders: synthetic phantom in three planes and the oblique mosaic re-slice.


@pytest.mark.parametrize("plane", fixtures.PLANES)
def test_phantom_series_matches_simpleitk(phantom_series, plane):
    volume = read_volume(phantom_series[plane])
    data, affine = simpleitk_as_ras(simpleitk_series(phantom_series[plane]))
    assert_same_voxels(volume, data)
    assert_same_affine(volume.affine, affine)


@pytest.mark.parametrize("plane", fixtures.PLANES)
def test_phantom_series_matches_phantom(phantom_series, plane):
    "The synthetic phantom comes back on its own grid, within the writer's uint16 quantisation step."
    phantom = fixtures.phantom_volume()
    volume = read_volume(phantom_series[plane])
    first_slice = pydicom.dcmread(phantom_series[plane] / "Image-1.dcm", stop_before_pixels=True)
    quantisation = float(first_slice.RescaleSlope) / 2
    assert_same_affine(volume.affine, phantom.affine)
    assert volume.data.shape == phantom.data.shape
    np.testing.assert_allclose(volume.data, phantom.data, rtol=0, atol=quantisation + 1e-4)


def test_oblique_series_matches_simpleitk(mosaic_series):
    volume = read_volume(mosaic_series)
    data, affine = simpleitk_as_ras(simpleitk_series(mosaic_series))
    assert_same_voxels(volume, data)
    assert_same_affine(volume.affine, affine)


def test_oblique_series_matches_nibabel_mosaic(mosaic_series):
    "read_volume on the re-sliced files equals nibabel's decode of the original mosaic, in world space."
    tiles, affine_lps = fixtures.decode_mosaic(fixtures.mosaic_files()[0])
    canonical = nib.as_closest_canonical(nib.Nifti1Image(tiles, LPS_TO_RAS @ affine_lps))
    volume = read_volume(mosaic_series)
    assert_same_affine(volume.affine, canonical.affine)
    assert_same_voxels(volume, np.asarray(canonical.dataobj))


def test_mosaic_writer_matches_nibabel(mosaic_series):
    "Each re-sliced file, decoded by nibabel, puts the mosaic tile's pixels at the mosaic's world positions."
    tiles, affine = fixtures.decode_mosaic(fixtures.mosaic_files()[0])
    count = tiles.shape[2]
    names = sorted(path.name for path in mosaic_series.iterdir())
    assert len(names) == count == 81
    assert names[:3] == ["Image-1.dcm", "Image-10.dcm", "Image-11.dcm"]  # text order is not slice order

    for index in range(count):
        path = mosaic_series / f"Image-{index + 1}.dcm"
        wrapper = wrapper_from_file(str(path))
        # A single-slice wrapper's affine maps (row, column, 0) to LPS mm, like the mosaic's.
        np.testing.assert_array_equal(wrapper.get_data(), tiles[:, :, index])
        np.testing.assert_allclose(wrapper.affine[:3, :2], affine[:3, :2], rtol=0, atol=1e-6)
        expected_position = affine @ [0, 0, index, 1]
        np.testing.assert_allclose(wrapper.affine[:3, 3], expected_position[:3], rtol=0, atol=1e-6)


def test_mosaic_series_has_no_source_identifiers(mosaic_series):
    dataset = pydicom.dcmread(mosaic_series / "Image-1.dcm", stop_before_pixels=True)
    assert dataset.PatientName == fixtures.TEST_PATIENT_NAME
    assert dataset.PatientID == fixtures.TEST_PATIENT_ID
    assert "PatientBirthDate" not in dataset
    assert "InstitutionName" not in dataset
    assert dataset.Modality == "MR"
    assert dataset.SOPClassUID == pydicom.uid.MRImageStorage


def test_monochrome1_inverted_over_series(phantom_series, tmp_path):
    "A MONOCHROME1 copy reads as max + min - value of the MONOCHROME2 original, over the whole series."
    folder = tmp_path / "monochrome1"
    shutil.copytree(phantom_series["axial"], folder)
    for path in folder.iterdir():
        dataset = pydicom.dcmread(path)
        dataset.PhotometricInterpretation = "MONOCHROME1"
        dataset.save_as(path)
    # SimpleITK 2.5.7 inverts MONOCHROME1 over the stored type's range (65535 - value for uint16), not over
    # the series' max and min, so the reference inverts SimpleITK's read of the MONOCHROME2 original.
    original, affine = simpleitk_as_ras(simpleitk_series(phantom_series["axial"]))
    volume = read_volume(folder)
    assert_same_voxels(volume, original.max() + original.min() - original)
    assert_same_affine(volume.affine, affine)


def test_volume_has_warnings_list(phantom_series):
    volume = read_volume(phantom_series["axial"])
    assert isinstance(volume.warnings, list)
    assert all(isinstance(warning, str) for warning in volume.warnings)


# Single files: MR_small in each transfer syntax, and enhanced multi-frame MR.


@pytest.mark.parametrize("name", fixtures.MR_SMALL_FILES)
def test_mr_small_matches_simpleitk(name):
    path = fixtures.testdata_path(name)
    volume = read_volume(path)
    data, affine = simpleitk_as_ras(sitk.ReadImage(str(path)))
    assert_same_voxels(volume, data)
    # SimpleITK 2.5.7 (ITK 5.4) gives a single slice 1 mm along the normal and ignores SliceThickness
    # (0.8 mm here), so only the direction of the slice axis is compared with it.
    assert_same_affine(volume.affine[:, [0, 1, 3]], affine[:, [0, 1, 3]])
    slice_axis = volume.affine[:3, 2]
    np.testing.assert_allclose(slice_axis / np.linalg.norm(slice_axis), affine[:3, 2] / np.linalg.norm(affine[:3, 2]), atol=1e-6)


@pytest.mark.parametrize("name", fixtures.MR_SMALL_FILES)
def test_mr_small_slice_thickness(name):
    "A single slice without SpacingBetweenSlices is SliceThickness thick."
    volume = read_volume(fixtures.testdata_path(name))
    assert volume.spacing[2] == pytest.approx(0.8, abs=AFFINE_TOLERANCE)


@pytest.mark.parametrize("name", fixtures.EMRI_SMALL_FILES)
def test_enhanced_without_geometry_voxels(name):
    "Voxels only: these files have no position, orientation or spacing, so neither reader can place them."
    path = fixtures.testdata_path(name)
    volume = read_volume(path)
    image = sitk.ReadImage(str(path))
    # SimpleITK falls back to origin 0, identity direction and 1 mm, which is a convention and not
    # geometry from the file. The reader may choose another, so any axis order and flip is accepted.
    reference = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)).astype(np.float32)
    assert volume.data.dtype == np.float32
    assert find_axis_transform(volume.data, reference) is not None


@pytest.mark.parametrize("name", fixtures.EMRI_SMALL_FILES)
def test_enhanced_without_geometry_warns(name):
    "A volume whose geometry the reader made up must say so."
    volume = read_volume(fixtures.testdata_path(name))
    assert len(volume.warnings) > 0


@pytest.mark.parametrize("orientation", sorted(fixtures.ENHANCED_ORIENTATIONS))
def test_enhanced_with_geometry_matches_simpleitk(enhanced_files, orientation):
    path = enhanced_files[orientation]
    volume = read_volume(path)
    data, affine = simpleitk_as_ras(sitk.ReadImage(str(path)))
    assert_same_voxels(volume, data)
    assert_same_affine(volume.affine, affine)


@pytest.mark.parametrize("orientation", sorted(fixtures.ENHANCED_ORIENTATIONS))
def test_enhanced_with_geometry_matches_header(enhanced_files, orientation):
    "The affine equals the one built from the functional groups the fixture wrote."
    row_cosine, column_cosine = fixtures.ENHANCED_ORIENTATIONS[orientation]
    row_spacing, column_spacing = fixtures.ENHANCED_PIXEL_SPACING
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cosine * column_spacing  # (column, row, frame) indices
    affine_lps[:3, 1] = column_cosine * row_spacing
    affine_lps[:3, 2] = np.cross(row_cosine, column_cosine) * fixtures.ENHANCED_SLICE_SPACING
    affine_lps[:3, 3] = fixtures.ENHANCED_FIRST_POSITION
    canonical = nib.as_closest_canonical(nib.Nifti1Image(np.zeros((64, 64, 10), np.float32), LPS_TO_RAS @ affine_lps))
    volume = read_volume(enhanced_files[orientation])
    assert_same_affine(volume.affine, canonical.affine)


def test_enhanced_too_short_raises():
    "emri_small_jpeg_2k_lossless_too_short.dcm has no Rows, Columns or pixel data; SimpleITK also fails on it."
    path = fixtures.testdata_path(fixtures.EMRI_TOO_SHORT)
    with pytest.raises(MGMTDataError) as caught:
        read_volume(path)
    assert str(path) in str(caught.value)
    assert caught.value.fix
