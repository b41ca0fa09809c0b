"""``monai-oct import-vendor``: Heidelberg HEYEX ``.vol`` files -> a datalist that check-data and the segmentation bundle read.

The ``.vol`` fixtures are written here by :func:`write_heyex_vol`, a minimal writer of the HEYEX VOL layout: eyepy
0.21.0's own ``HeVolWriter`` cannot write one (it hands its date fields a ``datetime`` where its format's
``FloatDate`` adapter wants an ISO string: ``TypeError: fromisoformat: argument must be str``). The writer is
checked against eyepy's reader (``test_fixture_reads_back_with_eyepy``). HEYEX XML exports are written by
:func:`write_heyex_xml`. No ``.e2e`` is tested: eyepy has no writer for it and no sample ships in a package.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_oct.cli import main
from monai_oct.core.datalist import check_dataset, load_datalist
from monai_oct.core.duke import boundaries_to_label
from monai_oct.core.io import DataError, read_image, read_label
from monai_oct.core.vendor import HEYEX_TO_DUKE, import_vendor, read_vendor_volume

eyepy = pytest.importorskip("eyepy", reason="eyepy (the vendor extra) reads the scanners' files")

#: HEYEX VOL file header: version, size_x, n_bscans, size_y, scale_x, distance, scale_y, size_x_slo, size_y_slo,
#: scale_x_slo, scale_y_slo, field_size_slo, scan_focus, scan_position, exam_time, scan_pattern, bscan_hdr_size, id,
#: reference_id, pid, patient_id, dob, vid, visit_id, visit_date, grid_type, grid_offset, grid_type1, grid_offset1,
#: prog_id (258 bytes), then zeros up to 2048 bytes.
VOL_HEADER = "<12s3I3d2I2dId4sQiI16s16sI24sdI24sd4I34s"
#: B-scan header: version, bscan_hdr_size, start_x, start_y, end_x, end_y, num_seg, seg_offset, quality, shift,
#: iv_transformation[6] (88 bytes), zeros up to 256, then num_seg x size_x float32 lines, zeros up to bscan_hdr_size.
BSCAN_HEADER = "<12sI4dIIfI6f"
#: HEYEX's order of the layer lines (eyepy's SEG_MAPPING): index -> name.
SEG_ORDER = ("ILM", "BM", "RNFL", "GCL", "IPL", "INL", "OPL", "ONL", "ELM", "IOS", "OPT", "CHO", "VIT", "ANT", "PR1",
             "PR2", "RPE")
MISSING = np.finfo(np.float32).max  # HEYEX's value of a line not segmented in a column


def write_heyex_vol(path: Path, bscans: np.ndarray, lines: dict[str, np.ndarray] | None = None,
                    version: bytes = b"HSF-OCT-103", scan_pattern: int = 3) -> Path:
    """Write a HEYEX VOL file: 2048-byte header, SLO (zeros), per B-scan a header with the layer lines and the
    float32 reflectivities in [0, 1].

    Args:
        path: the file.
        bscans: ``(N, H, W)`` float reflectivities.
        lines: line name (:data:`SEG_ORDER`) -> ``(N, W)`` 0-based rows (NaN: not segmented); lines not given are
            written as not segmented.
        version: the header's version string.
        scan_pattern: 1 line, 2 circle, 3 volume (ART), 4 fast volume, 5 radial.
    """
    n, h, w = bscans.shape
    slo = 16
    num_seg = len(SEG_ORDER)
    hdr = 256 + num_seg * 4 * w
    segs = np.full((n, num_seg, w), MISSING, dtype=np.float32)
    for name, rows in (lines or {}).items():
        segs[:, SEG_ORDER.index(name)] = np.where(np.isnan(rows), MISSING, rows)
    head = struct.pack(VOL_HEADER, version, w, n, h, 0.011, 0.12, 0.0039, slo, slo, 0.03, 0.03, 30, 0.0, b"OD\0\0",
                       0, scan_pattern, hdr, b"1", b"", 0, b"p0", 0.0, 0, b"v0", 0.0, 0, 0, 0, 0, b"")
    out = [head.ljust(2048, b"\0"), bytes(slo * slo)]
    for i in range(n):
        bh = struct.pack(BSCAN_HEADER, b"HSF-BS-103", hdr, 0.0, i * 0.12, w * 0.011, i * 0.12, num_seg, 256, 30.0, 0,
                         *[0.0] * 6)
        out += [bh.ljust(256, b"\0"), segs[i].tobytes(), bytes(hdr - 256 - segs[i].nbytes),
                bscans[i].astype("<f4").tobytes()]
    path.write_bytes(b"".join(out))
    return path


def layered_volume(n: int = 3, h: int = 64, w: int = 48, seed: int = 0):
    """``(N, H, W)`` reflectivities and all 17 HEYEX lines, ordered top to bottom along Duke's 8 boundaries."""
    rng = np.random.default_rng(seed)
    cols = np.arange(w)
    duke_rows = np.array([12, 17, 24, 29, 34, 44, 47, 52], dtype=np.float64)  # boundaries 1..8 (0-based)
    bend = 2.0 * np.sin(cols / w * np.pi)
    lines = {name: np.broadcast_to(duke_rows[k] + bend + np.arange(n)[:, None], (n, w)).copy()
             for k, name in enumerate(HEYEX_TO_DUKE)}
    for name in SEG_ORDER:
        lines.setdefault(name, lines["BM"] - 1)  # the other lines: somewhere, never used
    images = rng.uniform(0.0, 0.05, (n, h, w)).astype(np.float32)
    return images, lines


@pytest.fixture
def vol_file(tmp_path):
    images, lines = layered_volume()
    lines["ILM"][1, 5] = np.nan  # one column of B-scan 1 without its ILM
    return write_heyex_vol(tmp_path / "scan.vol", images, lines), images, lines


def test_fixture_reads_back_with_eyepy(vol_file):
    """The test's writer is the layout eyepy reads: sizes, reflectivities and every line (NaN where missing)."""
    from eyepy.io.he.vol_reader import HeVolReader

    path, images, lines = vol_file
    reader = HeVolReader(path)
    assert reader.parsed_file.version == "HSF-OCT-103"
    np.testing.assert_array_equal(np.stack([b.data for b in reader.parsed_file.bscans]), images)
    volume = eyepy.io.import_heyex_vol(path)
    assert (volume.size_z, volume.size_y, volume.size_x) == images.shape
    for name in SEG_ORDER:
        np.testing.assert_allclose(volume.layers[name].data, lines[name].astype(np.float32), equal_nan=True)


def test_read_vendor_volume_labels_follow_the_duke_boundaries(vol_file, tmp_path):
    path, images, lines = vol_file
    vol = read_vendor_volume(path)
    assert vol.bscans.dtype == np.uint8 and vol.bscans.shape == images.shape
    assert vol.format == "Heidelberg HEYEX VOL" and vol.meta["laterality"] == "OD"
    res = import_vendor([path], tmp_path / "out")
    items = load_datalist(res.datalist, key="test")
    assert [it["bscan"] for it in items] == [0, 1, 2] and res.num_labelled == 3
    for i, it in enumerate(items):
        label = read_label(it["label"])
        bounds = np.stack([lines[k][i] for k in HEYEX_TO_DUKE])
        np.testing.assert_array_equal(label, boundaries_to_label(bounds + 1, images.shape[1]))
        assert set(np.unique(label)) <= set(range(9)) | {255}
        np.testing.assert_array_equal(read_image(it["image"]), vol.bscans[i])
    assert (read_label(items[1]["label"])[:, 5] == 255).all()  # the column without its ILM is unannotated
    assert (read_label(items[0]["label"]) != 255).all()


def test_crossing_lines_are_unannotated_and_missing_lines_give_images_only(tmp_path):
    images, lines = layered_volume(n=2)
    lines["IPL"][0, 7] = lines["RNFL"][0, 7] - 3  # IPL above RNFL: not a layered column
    res = import_vendor([write_heyex_vol(tmp_path / "a.vol", images, lines)], tmp_path / "a")
    label = read_label(load_datalist(res.datalist, key="test")[0]["label"])
    assert (label[:, 7] == 255).all() and (label[:, 6] != 255).all()
    # HEYEX's automatic segmentation: ILM and BM only -> images, no labels, and the reason
    only = {k: lines[k] for k in ("ILM", "BM")}
    res = import_vendor([write_heyex_vol(tmp_path / "b.vol", images, only)], tmp_path / "b")
    items = load_datalist(res.datalist, key="test")
    assert len(items) == 2 and not any("label" in it for it in items) and not (tmp_path / "b" / "labels").exists()
    assert "no RNFL, IPL, INL, OPL, PR1, PR2 lines" in res.summary()


def test_cli_import_then_check_data_accepts_it(vol_file, tmp_path, capsys):
    path, images, _ = vol_file
    out = tmp_path / "imported"
    assert main(["import-vendor", str(path), "--out", str(out)]) == 0
    assert "3 B-scans, 3 with layer labels" in capsys.readouterr().out
    data = json.loads((out / "datalist.json").read_text())
    assert list(data) == ["test"] and data["test"][0]["image"] == "images/scan_000.png"  # relative to the datalist
    assert not list(out.rglob(".tmp.*"))
    assert main(["check-data", str(out / "datalist.json")]) == 0
    rep = check_dataset(load_datalist(out / "datalist.json"))
    assert rep.ok and rep.num_labelled == 3 and set(rep.class_pixels) <= set(range(9)) | {255}


@pytest.mark.parametrize("case", ["missing", "extension", "version", "truncated", "short", "zero_size", "circle"])
def test_bad_files_stop_with_a_message_naming_the_file(tmp_path, capsys, case):
    images, lines = layered_volume(n=2)
    good = write_heyex_vol(tmp_path / "good.vol", images, lines).read_bytes()
    bad, expect = tmp_path / "bad.vol", ""
    if case == "missing":
        expect = "file not found"
    elif case == "extension":
        bad = tmp_path / "bad.fda"
        bad.write_bytes(good)
        expect = "unknown scanner file type '.fda'"
    elif case == "version":
        bad.write_bytes(b"HSF-XYZ-999\0" + good[12:])
        expect = "not a HEYEX VOL file this toolkit reads: version 'HSF-XYZ-999'"
    elif case == "truncated":
        bad.write_bytes(good[:-100])
        expect = "corrupt or truncated HEYEX VOL file"
    elif case == "short":
        bad.write_bytes(good[:1000])
        expect = "shorter than the 2048-byte header"
    elif case == "zero_size":
        bad.write_bytes(good[:12] + struct.pack("<I", 0) + good[16:])
        expect = "corrupt HEYEX VOL header: {'size_x': 0}"
    else:  # a circle scan: a layout eyepy parses but does not turn into a volume
        write_heyex_vol(bad, images, lines, scan_pattern=2)
        expect = "cannot read Heidelberg HEYEX VOL file (ValueError: The EyeVolume object does not support scan pattern 2"
    with pytest.raises(DataError, match="bad"):
        read_vendor_volume(bad)
    out = tmp_path / "out"
    assert main(["import-vendor", str(tmp_path / "good.vol"), str(bad), "--out", str(out)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {bad}: ") and expect in last, last
    assert not out.exists()  # the good file is not half-imported either


def test_without_eyepy_the_error_says_how_to_install_it(vol_file, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "eyepy", None)
    monkeypatch.setitem(sys.modules, "eyepy.io", None)
    with pytest.raises(ImportError, match=r"pip install monai-oct\[vendor\]"):
        read_vendor_volume(vol_file[0])
    assert main(["import-vendor", str(vol_file[0]), "--out", str(tmp_path / "o")]) == 2
    assert "pip install monai-oct[vendor]" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.slow
def test_segmentation_bundle_evaluates_an_imported_volume(vol_file, tmp_path):
    """The issue's check: a .vol fixture -> import-vendor -> the oct_layer_seg evaluate config scores it."""
    from test_seg_bundle import TINY, _check_report, run_bundle

    from monai_oct.networks.segmentation import segmentation_network

    out = tmp_path / "imported"
    assert main(["import-vendor", str(vol_file[0]), "--out", str(out)]) == 0
    torch.manual_seed(0)
    ckpt = tmp_path / "untrained.pt"
    torch.save(segmentation_network("unet", out_channels=10, channels=[8, 16, 32]).state_dict(), ckpt)
    ev = tmp_path / "eval"
    run_bundle(["train.yaml", "evaluate.yaml"], "--datalist", out / "datalist.json", "--ckpt", ckpt,
               "--output_dir", ev, "--overlays", 1, "--device", "cpu", *TINY)
    rep = _check_report(ev / "metrics.json", num_images=3)
    assert rep["datalist"] == str(out / "datalist.json")
    assert len(list((ev / "overlays").glob("*.png"))) == 1


def write_heyex_xml(folder: Path, bscans: np.ndarray, lines: dict[str, np.ndarray]) -> Path:
    """Write a minimal HEYEX XML export: ``export.xml`` naming a localizer PNG and one PNG per B-scan, each with its
    ``SegLine`` elements (name + row per A-scan, 3.0e+38 where not segmented), in the element paths eyepy reads."""
    from xml.etree.ElementTree import Element, SubElement, tostring

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = bscans.shape

    def image(parent, kind, url, width, height, start_y=0.0):
        im = SubElement(parent, "Image")
        SubElement(SubElement(im, "ImageType"), "Type").text = kind
        ctx = SubElement(im, "OphthalmicAcquisitionContext")
        for tag, value in [("Width", width), ("Height", height), ("ScaleX", 0.011), ("ScaleY", 0.0039), ("Angle", 30),
                           ("Focus", 0.0), ("ImageQuality", 30.0)]:
            SubElement(ctx, tag).text = str(value)
        for end, x in [("Start", 0.0), ("End", w * 0.011)]:
            coord = SubElement(SubElement(ctx, end), "Coord")
            SubElement(coord, "X").text, SubElement(coord, "Y").text = str(x), str(start_y)
        SubElement(SubElement(im, "ImageData"), "ExamURL").text = f"C:\\HEYEX\\export\\{url}"
        return im

    root = Element("HEDX")
    series = SubElement(SubElement(SubElement(SubElement(root, "BODY"), "Patient"), "Study"), "Series")
    SubElement(series, "Laterality").text = "R"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "slo.png")
    image(series, "LOCALIZER", "slo.png", 16, 16)
    for i in range(n):
        Image.fromarray(bscans[i]).save(folder / f"b{i}.png")
        seg = SubElement(image(series, "OCT", f"b{i}.png", w, h, start_y=i * 0.12), "Segmentation")
        SubElement(seg, "NumSegmentations").text = str(len(lines))
        for name, rows in lines.items():
            line = SubElement(seg, "SegLine")
            SubElement(line, "Name").text = name
            SubElement(line, "Array").text = " ".join("3.0e+38" if np.isnan(r) else f"{r:.3f}" for r in rows[i])
    path = folder / "export.xml"
    path.write_bytes(tostring(root))
    return path


def test_heyex_xml_export_labels_follow_the_duke_boundaries(tmp_path):
    """The XML export path: B-scan PNGs beside the XML, lines in SegLine elements -> Duke maps, as from a .vol."""
    images, lines = layered_volume(n=2)
    eight = {k: np.round(lines[k], 3) for k in HEYEX_TO_DUKE}  # the XML holds 3 decimals
    eight["RNFL"][1, 4] = np.nan
    grey = np.round(images / images.max() * 255).astype(np.uint8)
    res = import_vendor([write_heyex_xml(tmp_path / "xml", grey, eight)], tmp_path / "out")
    items = load_datalist(res.datalist, key="test")
    assert res.files[0]["format"] == "Heidelberg HEYEX XML export" and res.num_labelled == 2
    for i, it in enumerate(items):
        np.testing.assert_array_equal(read_image(it["image"]), grey[i])
        bounds = np.stack([eight[k][i] for k in HEYEX_TO_DUKE]).astype(np.float32)
        np.testing.assert_array_equal(read_label(it["label"]), boundaries_to_label(bounds + 1, images.shape[1]))
    assert (read_label(items[1]["label"])[:, 4] == 255).all()  # 3.0e+38: not segmented there
