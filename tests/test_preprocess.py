"""DL preprocessing (PAPER.md "DL preprocessing"): pixel reading, breast mask, the network
input of an LE/RC pair, and the exact maps between the source image and the network input."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import get_decoder
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from scipy import ndimage

from cem_node.contracts.params import PreprocessParams
from cem_node.pipeline.pixels import PixelDataError, SourceImage, read_source_image
from cem_node.pipeline.preprocess import (
    PreprocessError,
    PreprocessGeometry,
    breast_mask,
    preprocess_mask_for_training,
    preprocess_pair,
    resize_shape,
)
from cem_node.synthetic import SynthOptions, generate_study
from tests.dicom_validators import missing_tool

CDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "cdd-cesm-512"
VIEWS = [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
#: network smaller than the crop (scale ~0.55-0.85) and bigger (scale ~2.5-3)
SMALLER = {"short_side": 224, "max_long_side": 1333}
BIGGER = {"short_side": 800, "max_long_side": 1333}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_study(tmp_path_factory.mktemp("synth"), 20250, 3, SynthOptions(size="small"))


@cache
def _read(path: Path) -> SourceImage:
    return read_source_image(path)


def _pair(study: Path, lat: str, view: str) -> tuple[SourceImage, SourceImage]:
    folder = study / "dicom"
    return _read(folder / f"LE_{lat}{view}.dcm"), _read(folder / f"RC_{lat}{view}.dcm")


def _lesion_mask(study: Path, lat: str, view: str) -> np.ndarray:
    (path,) = sorted((study / "masks").glob(f"*_{lat}{view}.png"))[:1]
    return np.asarray(Image.open(path)).astype(bool)


def _drawn_masks(shape: tuple[int, int], breast: np.ndarray) -> dict[str, np.ndarray]:
    """An ellipse and an irregular star with concavities, inside the breast."""
    cy, cx = ndimage.center_of_mass(breast)
    ellipse = np.zeros(shape, np.uint8)
    cv2.ellipse(ellipse, (round(cx), round(cy)), (41, 23), 30, 0, 360, 1, -1)
    theta = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    radius = 35 + 15 * np.sin(5 * theta) + 6 * np.cos(3 * theta)
    star = np.stack([cx + 15 + radius * np.cos(theta), cy - 30 + radius * np.sin(theta)], axis=1)
    irregular = np.zeros(shape, np.uint8)
    cv2.fillPoly(irregular, [star.round().astype(np.int32)], 1)
    masks = {"ellipse": ellipse.astype(bool), "irregular": irregular.astype(bool)}
    for name, mask in masks.items():
        assert (mask & breast).sum() == mask.sum(), f"{name} must lie inside the breast"
    return masks


# --- geometry: masks, points and boxes ---------------------------------------------------------


@pytest.mark.parametrize("size", [SMALLER, BIGGER], ids=["net-smaller", "net-bigger"])
@pytest.mark.parametrize("flip_right", [False, True], ids=["noflip", "flip"])
@pytest.mark.parametrize(("lat", "view"), VIEWS, ids=[f"{lat}{view}" for lat, view in VIEWS])
def test_mask_round_trip_within_one_pixel(
    study: Path, lat: str, view: str, flip_right: bool, size: dict[str, int]
) -> None:
    le, rc = _pair(study, lat, view)
    params = PreprocessParams(flip_right=flip_right, **size)
    out = preprocess_pair(le, rc, params)
    geom = out.geometry
    assert geom.flipped == (flip_right and lat == "R")
    bigger = size is BIGGER
    assert (min(geom.scale) > 1.5) if bigger else (max(geom.scale) < 0.95)

    masks = _drawn_masks(le.shape, out.breast_mask)
    masks["generator lesion"] = _lesion_mask(study, lat, view)
    for name, mask in masks.items():
        network = geom.mask_to_network(mask)
        assert network.shape == geom.network_shape and network.dtype == bool
        area_ratio = network.sum() / (mask.sum() * geom.scale[0] * geom.scale[1])
        assert 0.9 < area_ratio < 1.1, name
        back = geom.mask_to_source(network)
        assert back.shape == mask.shape and back.dtype == bool
        lost, gained = mask & ~back, back & ~mask
        # every differing pixel touches the original boundary (8-neighbourhood)
        inside = ndimage.distance_transform_cdt(mask, metric="chessboard")
        outside = ndimage.distance_transform_cdt(~mask, metric="chessboard")
        assert not lost.any() or inside[lost].max() <= 1, name
        assert not gained.any() or outside[gained].max() <= 1, name
        if bigger:
            assert not (lost.any() or gained.any()), f"{name}: enlarging must round-trip exactly"
        # the mask resampling agrees with the point and box maps
        centre = np.array(ndimage.center_of_mass(mask))[::-1]
        net_centre = np.array(ndimage.center_of_mass(network))[::-1]
        expected = geom.points_to_network(centre)
        assert np.abs(net_centre - expected).max() < 0.25, name
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
        nrows, ncols = np.flatnonzero(network.any(1)), np.flatnonzero(network.any(0))
        net_box = [ncols[0], nrows[0], ncols[-1] + 1, nrows[-1] + 1]
        assert np.abs(geom.boxes_to_network(box) - net_box).max() <= 1.0, name
    assert np.array_equal(preprocess_mask_for_training(mask, geom), geom.mask_to_network(mask))


@pytest.mark.parametrize("flipped", [False, True])
@pytest.mark.parametrize("network_shape", [(50, 100), (333, 617)])
def test_points_and_boxes_round_trip_exactly(flipped: bool, network_shape: tuple[int, int]) -> None:
    geom = PreprocessGeometry((300, 400), (10, 20, 110, 220), flipped, network_shape)
    rng = np.random.default_rng(7)
    points = rng.uniform(-5, 405, size=(200, 2))
    assert np.allclose(geom.points_to_source(geom.points_to_network(points)), points, atol=1e-6)
    assert np.allclose(geom.points_to_network(geom.points_to_source(points)), points, atol=1e-6)
    corners = rng.uniform(0, 400, size=(100, 2, 2))
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    for there, back in (
        (geom.boxes_to_network, geom.boxes_to_source),
        (geom.boxes_to_source, geom.boxes_to_network),
    ):
        mapped = there(boxes)
        assert (mapped[:, 0] <= mapped[:, 2]).all() and (mapped[:, 1] <= mapped[:, 3]).all()
        assert np.allclose(back(mapped), boxes, atol=1e-6)
    assert geom.points_to_network([1.0, 2.0]).shape == (2,)
    assert geom.boxes_to_network([1.0, 2.0, 3.0, 4.0]).shape == (4,)


def test_geometry_known_values() -> None:
    # crop 100 rows x 200 columns at (y0, x0) = (10, 20), network half size
    plain = PreprocessGeometry((300, 400), (10, 20, 110, 220), False, (50, 100))
    mirror = PreprocessGeometry((300, 400), (10, 20, 110, 220), True, (50, 100))
    # pixel centres: crop column 0 -> (0 + 0.5) * 0.5 - 0.5
    assert np.allclose(plain.points_to_network([20, 10]), [-0.25, -0.25])
    assert np.allclose(plain.points_to_network([21, 11]), [0.25, 0.25])
    # the flip mirrors crop column c to 199 - c
    assert np.allclose(mirror.points_to_network([20, 10]), [99.25, -0.25])
    assert np.allclose(mirror.points_to_network([219, 10]), [-0.25, -0.25])
    # box edges scale without the half pixel; the flip swaps x0 and x1
    assert np.allclose(plain.boxes_to_network([20, 10, 220, 110]), [0, 0, 100, 50])
    assert np.allclose(mirror.boxes_to_network([20, 10, 60, 30]), [80, 0, 100, 10])
    assert np.allclose(mirror.boxes_to_source([0, 0, 10, 5]), [200, 10, 220, 20])
    assert PreprocessGeometry.from_dict(mirror.as_dict()) == mirror
    with pytest.raises(ValueError, match="outside"):
        PreprocessGeometry((100, 100), (0, 0, 101, 50), False, (10, 10))


def test_probability_map_pasted_at_the_crop_offset() -> None:
    geom = PreprocessGeometry((300, 400), (10, 20, 110, 220), True, (50, 100))
    prob = np.zeros((50, 100), np.float32)
    prob[:, :10] = 0.9  # the first network columns: the crop's last columns (mirrored)
    full = geom.probability_to_source(prob)
    assert full.shape == (300, 400) and full.dtype == np.float32
    assert full[:10].max() == 0 and full[110:].max() == 0 and full[:, :20].max() == 0
    mask = geom.mask_to_source(prob)
    assert mask[10:110, 200:220].all() and not mask[:, :199].any() and not mask[:, 220:].any()
    assert not geom.mask_to_source(prob, threshold=0.95).any()
    with pytest.raises(ValueError, match="network input"):
        geom.mask_to_source(np.zeros((10, 10)))


def test_resize_rule() -> None:
    params = PreprocessParams(short_side=800, max_long_side=1333)
    assert resize_shape((400, 300), params) == (1067, 800)  # short side rules
    assert resize_shape((2000, 500), params) == (1333, 333)  # the long side caps it
    assert resize_shape((800, 800), params) == (800, 800)
    assert resize_shape((1600, 1000), params) == (1280, 800)  # shrinking works the same way


# --- breast mask: markers, views, failures -----------------------------------------------------


def _free_corners(mask: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Top-left corners of size x size windows in the image corners, far from the breast."""
    rows, cols = mask.shape
    near = ndimage.binary_dilation(mask, iterations=12)
    corners = [
        (8, 8),
        (8, cols - size - 8),
        (rows - size - 8, 8),
        (rows - size - 8, cols - size - 8),
    ]
    return [(r, c) for r, c in corners if not near[r : r + size, c : c + size].any()]


@pytest.mark.parametrize(("lat", "view"), [("L", "CC"), ("R", "MLO")])
def test_markers_and_text_are_excluded(study: Path, lat: str, view: str) -> None:
    le, rc = _pair(study, lat, view)
    clean = breast_mask(rc.pixels)
    free = _free_corners(clean, 60)
    assert len(free) >= 2, "the phantom leaves two image corners free"
    (mr, mc), (tr, tc) = free[:2]
    top = float(2**rc.bits_stored - 1)
    rc_marked, le_marked = rc.pixels.copy(), le.pixels.copy()
    for image in (rc_marked, le_marked):
        image[mr + 20 : mr + 36, mc + 20 : mc + 36] = top  # a lead marker: saturated square
        text = np.zeros((60, 60), np.uint8)
        cv2.putText(text, "R", (5, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.9, 1, 2)
        cv2.putText(text, "MLO", (2, 52), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1, 2)
        image[tr : tr + 60, tc : tc + 60][text > 0] = 0.8 * top  # a burnt-in label
    marked = breast_mask(rc_marked)
    assert not marked[mr : mr + 60, mc : mc + 60].any()
    assert not marked[tr : tr + 60, tc : tc + 60].any()
    assert (marked ^ clean).sum() <= 0.002 * clean.sum()
    y0, x0, y1, x1 = preprocess_pair(le_marked, rc_marked, PreprocessParams()).geometry.crop
    for r, c in ((mr + 20, mc + 20), (tr, tc)):
        box_rows, box_cols = range(r, r + 40), range(c, c + 40)
        overlaps = max(y0, box_rows.start) < min(y1, box_rows.stop) and max(
            x0, box_cols.start
        ) < min(x1, box_cols.stop)
        assert not overlaps, f"crop {(y0, x0, y1, x1)} includes a marker at {(r, c)}"


@pytest.mark.parametrize(("lat", "view"), VIEWS, ids=[f"{lat}{view}" for lat, view in VIEWS])
def test_breast_mask_matches_the_phantom(study: Path, lat: str, view: str) -> None:
    _, rc = _pair(study, lat, view)
    mask = breast_mask(rc.pixels)
    assert mask.dtype == bool and mask.shape == rc.shape
    # the phantom's background is flat and dark: the mask must hold every clearly bright
    # pixel and almost no dark one; lesions are inside it
    image = cv2.GaussianBlur(rc.pixels, (0, 0), 1.5)
    background = np.median(image[~mask])
    spread = np.median(image[mask]) - background
    bright = image > background + 0.5 * spread
    assert (bright & ~mask).sum() <= 0.002 * bright.sum()
    assert (mask & (image < background + 0.1 * spread)).sum() <= 0.01 * mask.sum()
    assert mask[_lesion_mask(study, lat, view)].all()
    # the chest wall is at column 0 for left breasts and at the last column for right ones
    chest = mask[:, 0] if lat == "L" else mask[:, -1]
    assert chest.sum() > 0.4 * mask.any(axis=1).sum()
    assert np.array_equal(ndimage.binary_fill_holes(mask), mask), "holes are filled"


def test_flat_or_markers_only_images_raise() -> None:
    with pytest.raises(PreprocessError, match="flat"):
        breast_mask(np.full((200, 150), 812.0, np.float32))
    with pytest.raises(PreprocessError, match="flat"):
        preprocess_pair(np.zeros((200, 150)), np.zeros((200, 150)), PreprocessParams())
    only_marker = np.zeros((400, 300), np.float32)
    only_marker[10:22, 10:22] = 4095  # a marker and nothing else
    with pytest.raises(PreprocessError, match="no breast found"):
        breast_mask(only_marker)
    with pytest.raises(PreprocessError, match="NaN"):
        breast_mask(np.full((50, 50), np.nan))


# --- the network input -------------------------------------------------------------------------


def test_output_dtype_shape_range_and_determinism(study: Path) -> None:
    le, rc = _pair(study, "R", "CC")
    params = PreprocessParams()
    out = preprocess_pair(le, rc, params)
    image = out.image
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[0] == 3
    assert image.shape[1:] == out.geometry.network_shape
    assert out.geometry.network_shape == resize_shape(out.geometry.crop_shape, params)
    assert min(out.geometry.network_shape) == params.short_side
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.9
    assert out.breast_mask.shape == rc.shape and out.breast_mask.dtype == bool
    y0, x0, y1, x1 = out.geometry.crop
    rows, cols = np.flatnonzero(out.breast_mask.any(1)), np.flatnonzero(out.breast_mask.any(0))
    assert (y0, x0, y1, x1) == (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    again = preprocess_pair(le, rc, params)
    assert np.array_equal(again.image, image) and again.geometry == out.geometry
    # the same from arrays and an explicit laterality
    assert np.array_equal(preprocess_pair(le.pixels, rc.pixels, params, "R").image, image)


def test_channel_order_and_clahe_clips(study: Path) -> None:
    le, rc = _pair(study, "L", "MLO")
    base = preprocess_pair(le, rc, PreprocessParams()).image  # clips (2.5 | 2.5, 1.0)
    same = preprocess_pair(le, rc, PreprocessParams(clahe_clip_recombined=(2.5, 2.5))).image
    low = preprocess_pair(le, rc, PreprocessParams(clahe_clip_recombined=(1.0, 1.0))).image
    assert np.array_equal(same[1], same[2])  # channels 1 and 2: the same RC ...
    assert not np.array_equal(base[1], base[2])  # ... differing only by the clip
    assert np.array_equal(base[1], same[1]) and np.array_equal(base[2], low[2])
    assert np.array_equal(base[0], same[0])  # LE is channel 0, independent of RC clips
    assert not np.array_equal(base[0], base[1])
    # channel 0 is the LE: feeding the RC as LE makes it equal to channel 1
    rc_twice = preprocess_pair(rc, rc, PreprocessParams()).image
    assert np.array_equal(rc_twice[0], rc_twice[1]) and np.array_equal(rc_twice[1:], base[1:])


def test_pipeline_matches_the_paper_step_by_step(study: Path) -> None:
    """Without a resize (scale 1) the output is exactly the paper's recipe, written out here."""
    le, rc = _pair(study, "L", "CC")
    mask = breast_mask(rc.pixels)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    params = PreprocessParams(short_side=int(min(y1 - y0, x1 - x0)), max_long_side=4096, levels=64)
    out = preprocess_pair(le, rc, params)
    assert out.geometry.network_shape == (y1 - y0, x1 - x0)

    def reference(image: np.ndarray, clips: list[float]) -> list[np.ndarray]:
        crop = (image * mask)[y0:y1, x0:x1]
        lo, hi = np.percentile(crop[crop != 0], [1, 99])
        scaled = (np.clip(crop, lo, hi) - lo) / (hi - lo)
        quantised = np.rint(np.rint(scaled * 63) * 255 / 63).astype(np.uint8)
        quantised[~mask[y0:y1, x0:x1]] = 0
        return [cv2.createCLAHE(clipLimit=c, tileGridSize=(16, 16)).apply(quantised) for c in clips]

    expected = np.stack(reference(le.pixels, [2.5]) + reference(rc.pixels, [2.5, 1.0]))
    got = np.rint(out.image * 255).astype(np.uint8)
    assert (got != expected).mean() < 1e-3  # exact but for ties in rounding
    assert len(np.unique(got[0][mask[y0:y1, x0:x1]])) <= 256


def test_flip_puts_the_chest_wall_on_the_left(study: Path) -> None:
    params = PreprocessParams(flip_right=True, short_side=256)
    for lat in ("L", "R"):
        le, rc = _pair(study, lat, "CC")
        out = preprocess_pair(le, rc, params)
        breast = out.geometry.mask_to_network(out.breast_mask)
        half = breast.shape[1] // 2
        assert breast[:, :half].sum() > 1.2 * breast[:, half:].sum(), lat
        assert breast[:, 0].sum() > 0.5 * breast.any(axis=1).sum(), lat
        # ... and the image is where the geometry says: its non-black part is the breast
        shown = ndimage.binary_opening(out.image[2] > 0.06, iterations=2)
        assert (shown & breast).sum() / (shown | breast).sum() > 0.95, lat
        # the image follows the same geometry: the enhancing lesion is where the map says
        lesion = out.geometry.mask_to_network(_lesion_mask(study, lat, "CC"))
        ring = ndimage.binary_dilation(lesion, iterations=8) & ~ndimage.binary_dilation(
            lesion, iterations=3
        )
        assert out.image[1][lesion].mean() > out.image[1][ring].mean() + 0.05, lat
    le, rc = _pair(study, "R", "CC")
    with pytest.raises(PreprocessError, match="laterality"):
        preprocess_pair(le.pixels, rc.pixels, params)


def test_shape_mismatch_and_bad_input_raise(study: Path) -> None:
    le, rc = _pair(study, "L", "CC")
    with pytest.raises(PreprocessError, match="differ in shape"):
        preprocess_pair(le.pixels[:-1], rc.pixels, PreprocessParams())
    with pytest.raises(PreprocessError, match="2-D"):
        preprocess_pair(le.pixels[None], rc.pixels, PreprocessParams())
    with pytest.raises(PreprocessError, match="laterality"):
        preprocess_pair(le, rc, PreprocessParams(), laterality="X")
    flat_le = np.full(rc.shape, 100.0, np.float32)
    with pytest.raises(PreprocessError, match="low-energy image is flat inside the breast"):
        preprocess_pair(flat_le, rc, PreprocessParams())


# --- reading pixels ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(study: Path) -> pydicom.Dataset:
    return pydicom.dcmread(study / "dicom" / "RC_LCC.dcm")


def _native(template: pydicom.Dataset, bits: int, photometric: str = "MONOCHROME2") -> tuple:
    base = template.pixel_array.astype(np.float64) / template.pixel_array.max()
    values = np.rint(base * ((1 << bits) - 1)).astype(np.uint8 if bits == 8 else np.uint16)
    stored = values if photometric == "MONOCHROME2" else ((1 << bits) - 1) - values
    ds = copy.deepcopy(template)
    ds.set_pixel_data(np.ascontiguousarray(stored), photometric, bits)
    return ds, values


def test_header_values(study: Path) -> None:
    image = _read(study / "dicom" / "RC_RMLO.dcm")
    assert image.laterality == "R" and image.view == "MLO"
    assert image.pixel_spacing_mm == (0.4, 0.4)
    assert image.bits_stored in (12, 14)
    assert image.photometric_interpretation == "MONOCHROME2"
    assert image.sop_instance_uid.startswith("1.2.826.0.1.3680043.8.498.")
    assert image.pixels.dtype == np.float32 and image.shape == (573, 478)
    assert not image.pixels.flags.writeable


@pytest.mark.parametrize("bits", [8, 12, 14, 16])
def test_bit_depths_and_monochrome1(template: pydicom.Dataset, bits: int, tmp_path: Path) -> None:
    ds, values = _native(template, bits)
    image = read_source_image(ds)
    assert image.bits_stored == bits and values.max() == (1 << bits) - 1
    assert np.array_equal(image.pixels, values.astype(np.float32))
    inverted, _ = _native(template, bits, "MONOCHROME1")
    inverted.save_as(tmp_path / "mono1.dcm")
    mono1 = read_source_image(tmp_path / "mono1.dcm")
    assert mono1.photometric_interpretation == "MONOCHROME1"
    assert np.array_equal(mono1.pixels, image.pixels)  # back to MONOCHROME2 sense


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_modality_lut_is_applied(template: pydicom.Dataset, photometric: str) -> None:
    ds, values = _native(template, 12, photometric)
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-100"
    image = read_source_image(ds)
    assert np.array_equal(image.pixels, 2 * values.astype(np.float32) - 100)


@pytest.mark.parametrize("bits", [12, 16])
@pytest.mark.parametrize(
    "syntax", [JPEG2000Lossless, JPEGLSLossless, RLELossless], ids=["j2k", "jpegls", "rle"]
)
def test_compressed_pixel_data_decodes_identically(
    template: pydicom.Dataset, syntax: pydicom.uid.UID, bits: int, tmp_path: Path
) -> None:
    ds, values = _native(template, bits)
    compressed = copy.deepcopy(ds)
    compressed.compress(syntax)
    compressed.save_as(tmp_path / "compressed.dcm")
    assert pydicom.dcmread(tmp_path / "compressed.dcm").file_meta.TransferSyntaxUID == syntax
    image = read_source_image(tmp_path / "compressed.dcm")
    assert np.array_equal(image.pixels, read_source_image(ds).pixels)
    assert np.array_equal(image.pixels, values.astype(np.float32))


def test_pixel_data_errors(
    template: pydicom.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds, _ = _native(template, 12)
    no_pixels = copy.deepcopy(ds)
    del no_pixels.PixelData
    with pytest.raises(PixelDataError, match="no pixel data"):
        read_source_image(no_pixels)
    frames = copy.deepcopy(ds)
    frames.NumberOfFrames = 3
    with pytest.raises(PixelDataError, match="multi-frame image \\(3 frames\\)"):
        read_source_image(frames)
    colour = copy.deepcopy(ds)
    colour.PhotometricInterpretation, colour.SamplesPerPixel = "RGB", 3
    with pytest.raises(PixelDataError, match=r"not a greyscale image.*RGB"):
        read_source_image(colour)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(PixelDataError, match="not a DICOM file"):
        read_source_image(tmp_path / "junk.dcm")

    # a transfer syntax without any decoder
    video = copy.deepcopy(ds)
    video.compress(RLELossless)
    video.file_meta.TransferSyntaxUID = MPEG2MPML
    with pytest.raises(PixelDataError, match=r"no pixel data decoder exists for .*MPEG2"):
        read_source_image(video)
    # a decoder whose plugins are not installed
    j2k = copy.deepcopy(ds)
    j2k.compress(JPEG2000Lossless)
    decoder = get_decoder(JPEG2000Lossless)
    with monkeypatch.context() as patch:  # as if pylibjpeg-openjpeg and pillow were absent
        patch.setattr(decoder, "_available", {})
        patch.setattr(
            decoder,
            "_unavailable",
            {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.0"), "pillow": ("pillow",)},
        )
        with pytest.raises(
            PixelDataError,
            match=r"JPEG 2000 Image Compression \(Lossless Only\) \(1\.2\.840\.10008\.1\.2\.4\.90\)"
            r": no decoder plugin is installed \(missing: pylibjpeg - requires pylibjpeg>=2\.0 "
            r"and pylibjpeg-openjpeg>=2\.0; pillow - requires pillow\)",
        ):
            read_source_image(j2k)
    # corrupt compressed data
    broken = copy.deepcopy(j2k)
    broken.PixelData = broken.PixelData[: len(broken.PixelData) // 3]
    with pytest.raises(
        PixelDataError, match="cannot decode the pixel data of transfer syntax JPEG"
    ):
        read_source_image(broken)
    assert issubclass(PixelDataError, ValueError) and issubclass(PreprocessError, ValueError)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


# --- real CEM (CDD-CESM, 8-bit 512 px JPEG) ----------------------------------------------------

#: hard cases: strong enhancement (an Otsu threshold on linear values loses the fatty parts)
REAL = ["P1_L_CM_MLO", "P119_L_CM_CC", "P28_L_CM_MLO", "P59_R_CM_CC", "P105_R_CM_CC"]


@pytest.mark.parametrize("name", REAL)
def test_real_recombined_breast_mask(name: str) -> None:
    if not (CDD / "images" / f"{name}.jpg").is_file():
        missing_tool(f"CDD-CESM data not found at {CDD} (see the shared data README)")
    rc = np.asarray(Image.open(CDD / "images" / f"{name}.jpg").convert("L"))
    lesion = np.asarray(Image.open(CDD / "masks" / f"{name}.jpg").convert("L")) > 127
    mask = breast_mask(rc)
    assert (mask & lesion).sum() >= 0.98 * lesion.sum(), "the lesion lies in the breast"
    # the breast: every clearly grey pixel of the largest bright region; not the black padding
    reference, _ = ndimage.label(rc > 8)
    sizes = np.bincount(reference.ravel())
    sizes[0] = 0
    reference = ndimage.binary_fill_holes(reference == sizes.argmax())
    iou = (mask & reference).sum() / (mask | reference).sum()
    assert iou > 0.93, f"IoU with the plain reference mask {iou:.3f}"
    assert (rc[~mask] > 40).mean() < 0.01, "bright pixels outside the breast"
    le = np.asarray(Image.open(CDD / "images" / f"{name.replace('_CM_', '_DM_')}.jpg").convert("L"))
    out = preprocess_pair(le, rc, PreprocessParams(flip_right=True), laterality=name.split("_")[1])
    assert out.image.shape == (3, *out.geometry.network_shape)
    back = out.geometry.mask_to_source(out.geometry.mask_to_network(lesion & mask))
    assert (back ^ (lesion & mask)).sum() <= 0.1 * lesion.sum()
