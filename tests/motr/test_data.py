"""hat-motr's data side: synthetic MOT17, the half split, the packer, the written ground truth, the datasets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hat.data.pack import PackReader
from hat.data.packer import run_pack
from hat.data.transforms import Normalize, RandomFlip, ToTensor
from hat.errors import BadSourceRecord, UserError
from hat_motr.dataset import Mot17ClipDataset, Mot17FrameDataset, MotClipCollate, MotFrameCollate
from hat_motr.mot import DETECTORS, read_gt, read_seqinfo, split_frames
from hat_motr.packer import Mot17Packer
from hat_motr.synth import generate_mot17
from hat_motr.transforms import ClipTransforms, MotRandomResize, MotRandomSelect, MotRandomSizeCrop
from tests.motr.synth_options import SYNTH

SEQS = ["MOT17-02", "MOT17-04", "MOT17-05"]


def load_gt(path: Path) -> np.ndarray:
    """gt.txt as an (N, 9) array, parsed independently of hat_motr."""
    return np.loadtxt(path, delimiter=",", ndmin=2)


# -- synth -----------------------------------------------------------------------------------
def test_synth_writes_three_detector_copies_sharing_images_and_gt(mot_raw: Path) -> None:
    train = mot_raw / "train"
    assert sorted(p.name for p in train.iterdir()) == sorted(f"{s}-{d}" for s in SEQS for d in DETECTORS)
    for k, seq in enumerate(SEQS):
        copies = [train / f"{seq}-{d}" for d in DETECTORS]
        infos = [read_seqinfo(c / "seqinfo.ini") for c in copies]
        assert [i.name for i in infos] == [c.name for c in copies]
        assert {(i.seq_length, i.width, i.height, i.frame_rate, i.im_ext) for i in infos} == {
            (SYNTH["frames_per_sequence"] + k, 320, 180, 30, ".jpg")
        }
        images = sorted(p.name for p in (copies[0] / "img1").iterdir())
        assert images == [f"{f:06d}.jpg" for f in range(1, infos[0].seq_length + 1)]
        for c in copies[1:]:
            assert (c / "gt" / "gt.txt").read_bytes() == (copies[0] / "gt" / "gt.txt").read_bytes()
            assert all((c / "img1" / n).read_bytes() == (copies[0] / "img1" / n).read_bytes() for n in images)
        dets = [(c / "det" / "det.txt").read_text() for c in copies]
        assert len(set(dets)) == 3 and all(len(d.splitlines()[0].split(",")) == 10 for d in dets)


def test_synth_ground_truth_looks_like_mot17(mot_raw: Path) -> None:
    entered = exited = occluded = 0
    for seq in SEQS:
        folder = mot_raw / "train" / f"{seq}-FRCNN"
        n = read_seqinfo(folder / "seqinfo.ini").seq_length
        gt = load_gt(folder / "gt" / "gt.txt")
        assert np.all(gt[:, 2:6] == np.round(gt[:, 2:6]))  # whole pixels, as MOT17's gt
        order = np.lexsort((gt[:, 0], gt[:, 1]))
        assert np.array_equal(order, np.arange(len(gt)))  # sorted by id, then frame
        ped = gt[:, 7] == 1
        assert np.all(gt[ped, 6] == 1) and np.all(gt[~ped, 6] == 0)
        assert {7, 8, 12} <= set(gt[~ped, 7].astype(int).tolist())
        assert np.all((gt[:, 8] >= 0) & (gt[:, 8] <= 1))
        occluded += int(((gt[ped, 8] > 0) & (gt[ped, 8] < 0.6)).sum())
        for ident in np.unique(gt[ped, 1]):
            rows = gt[gt[:, 1] == ident]
            frames = rows[:, 0].astype(int)
            assert np.array_equal(frames, np.arange(frames[0], frames[-1] + 1))  # one stretch in view
            x1, x2 = rows[:, 2] - 1, rows[:, 2] - 1 + rows[:, 4]
            if frames[0] > 1:
                entered += 1
                assert x1[0] < 0 or x2[0] > 320  # enters at an image edge
            if frames[-1] < n:
                exited += 1
                assert x1[-1] < 0 or x2[-1] > 320  # leaves at an image edge
    assert entered >= 3 and exited >= 3 and occluded >= 10


def test_synth_is_deterministic_and_refuses_a_used_dst(tmp_path: Path) -> None:
    tiny = {"num_sequences": 1, "frames_per_sequence": 8}
    generate_mot17(tmp_path / "a", seed=4, **tiny)
    generate_mot17(tmp_path / "b", seed=4, **tiny)
    files_a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    files_b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()}
    assert files_a == files_b and len(files_a) == 3 * (8 + 3)
    with pytest.raises(UserError, match="already holds MOT17"):
        generate_mot17(tmp_path / "a", seed=4, **tiny)
    assert not list((tmp_path / "a").glob(".synth-*"))


# -- the split --------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 5, 40, 41, 600, 1050])
def test_half_split_is_bytetracks_rule(n: int) -> None:
    # ByteTrack's convert_mot17_to_coco.py: 0-based image_range [0, n // 2] for train_half and
    # [n // 2 + 1, n - 1] for val_half, both inclusive; frame numbers are 1-based.
    train_range, val_range = (0, n // 2), (n // 2 + 1, n - 1)
    train = [i + 1 for i in range(n) if train_range[0] <= i <= train_range[1]]
    val = [i + 1 for i in range(n) if val_range[0] <= i <= val_range[1]]
    assert list(split_frames(n, "train")) == train
    assert list(split_frames(n, "val")) == val
    assert sorted(train + val) == list(split_frames(n, "full")) == list(range(1, n + 1))
    with pytest.raises(ValueError, match="split must be"):
        split_frames(n, "test")


# -- the packer --------------------------------------------------------------------------------
def test_pack_round_trip_keeps_images_and_every_gt_row(mot_raw: Path, mot_packed: Path) -> None:
    for split in ("train", "val"):
        reader = PackReader(mot_packed / f"{split}_lmdb")
        meta_seqs = reader.meta["sequences"]
        assert [s["name"] for s in meta_seqs] == [f"{s}-FRCNN" for s in SEQS]
        assert reader.meta["detector"] == "FRCNN" and "half = n // 2" in reader.meta["split_rule"]
        i = 0
        for entry in meta_seqs:
            folder = mot_raw / "train" / entry["name"]
            gt = load_gt(folder / "gt" / "gt.txt")
            frames = list(split_frames(entry["seq_length"], split))
            assert entry["num_frames"] == len(frames)
            for k, orig in enumerate(frames, start=1):
                sample = reader[i]
                i += 1
                assert (sample["seq"], sample["frame"], sample["orig_frame"]) == (entry["name"], k, orig)
                assert (sample["num_frames"], sample["width"], sample["height"]) == (len(frames), 320, 180)
                assert sample["image"] == (folder / "img1" / f"{orig:06d}.jpg").read_bytes()  # not re-encoded
                rows = gt[gt[:, 0] == orig]
                assert np.array_equal(sample["gt_ids"], rows[:, 1].astype(np.int64))
                expected = np.stack(
                    [rows[:, 2] - 1, rows[:, 3] - 1, rows[:, 2] - 1 + rows[:, 4], rows[:, 3] - 1 + rows[:, 5]], axis=1
                )
                assert np.array_equal(sample["gt_boxes"], expected)
                assert np.array_equal(sample["gt_consider"], rows[:, 6])
                assert np.array_equal(sample["gt_class"], rows[:, 7])
                np.testing.assert_allclose(sample["gt_visibility"], rows[:, 8])
        assert i == len(reader)


def test_val_ground_truth_is_written_in_motchallenge_layout(mot_raw: Path, mot_packed: Path) -> None:
    import motmetrics as mm

    for seq in SEQS:
        name = f"{seq}-FRCNN"
        folder = mot_packed / "val_gt" / name
        info = read_seqinfo(folder / "seqinfo.ini")
        n = read_seqinfo(mot_raw / "train" / name / "seqinfo.ini").seq_length
        assert info.seq_length == len(split_frames(n, "val")) and info.name == name
        written = mm.io.loadtxt(str(folder / "gt" / "gt.txt"), fmt="mot16")
        source = mm.io.loadtxt(str(mot_raw / "train" / name / "gt" / "gt.txt"), fmt="mot16")
        offset = n // 2 + 1
        source = source[source.index.get_level_values("FrameId") > offset].reset_index()
        source["FrameId"] -= offset
        assert written.index.get_level_values("FrameId").min() == 1
        assert written.index.get_level_values("FrameId").max() == info.seq_length
        left = written.reset_index().sort_values(["FrameId", "Id"]).reset_index(drop=True)
        right = source.sort_values(["FrameId", "Id"]).reset_index(drop=True)
        assert left.equals(right[left.columns])
    assert sorted(p.name for p in (mot_packed / "train_gt").iterdir()) == [f"{s}-FRCNN" for s in SEQS]


def test_detector_option_packs_another_copy(mot_raw: Path, tmp_path: Path) -> None:
    summary = run_pack(Mot17Packer(mot_raw, "val", detector="SDP"), tmp_path)
    reader = PackReader(summary.path)
    assert {reader[i]["seq"] for i in range(len(reader))} == {f"{s}-SDP" for s in SEQS}
    assert reader.meta["detector"] == "SDP"
    with pytest.raises(UserError, match="unknown MOT17 detector copy 'YOLO'"):
        Mot17Packer(mot_raw, "val", detector="YOLO")
    with pytest.raises(UserError, match="no split 'test'"):
        Mot17Packer(mot_raw, "test")
    # <src> may be the train folder itself
    assert len(Mot17Packer(mot_raw / "train", "val").records()) == len(reader)


def copy_raw(raw: Path, dst: Path) -> Path:
    shutil.copytree(raw, dst)
    return dst


def test_bad_sequences_are_bad_records_naming_file_and_line(mot_raw: Path, tmp_path: Path) -> None:
    src = copy_raw(mot_raw, tmp_path / "raw")
    gt = src / "train" / "MOT17-04-FRCNN" / "gt" / "gt.txt"
    lines = gt.read_text().splitlines()
    lines[4] = "5,1,10,20,oops,40,1,1,1"
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadSourceRecord) as err:
        run_pack(Mot17Packer(src, "train"), tmp_path / "p1")
    assert (err.value.file, err.value.line) == (str(gt), 5) and "'oops'" in err.value.reason
    assert not (tmp_path / "p1" / "train_lmdb").exists() and not (tmp_path / "p1" / "train_gt").exists()
    (src / "train" / "MOT17-02-FRCNN" / "seqinfo.ini").unlink()
    summary = run_pack(Mot17Packer(src, "train"), tmp_path / "p2", skip_bad=True)
    assert summary.num_skipped == 2
    reader = PackReader(summary.path)
    assert {reader[i]["seq"] for i in range(len(reader))} == {"MOT17-05-FRCNN"}
    assert sorted(p.name for p in (tmp_path / "p2" / "train_gt").iterdir()) == ["MOT17-05-FRCNN"]
    assert len(Mot17FrameDataset(str(summary.path)).sequences) == 1


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("1,2,3,4,5,6,1,1", "9 fields"),
        ("0,1,10,10,5,5,1,1,1", "frame 0 is out of range"),
        ("999,1,10,10,5,5,1,1,1", "frame 999 is out of range"),
        ("1,1,10,10,5,5,2,1,1", "consider flag must be 0 or 1"),
        ("1,1,10,10,5,5,1,14,1", "unknown class 14"),
        ("1,1,10,10,0,5,1,1,1", "not positive"),
        ("1,1.5,10,10,5,5,1,1,1", "id '1.5' is not an integer"),
        ("1,1,10,10,5,nan,1,1,1", "not a finite number"),
    ],
)
def test_malformed_gt_rows(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "gt.txt"
    path.write_text(f"1,1,10,10,5,5,1,1,1\n\n{row}\n")
    with pytest.raises(BadSourceRecord, match=message) as err:
        read_gt(path, seq_length=40)
    assert err.value.line == 3


def test_a_missing_image_is_a_bad_record_of_its_frame(mot_raw: Path, tmp_path: Path) -> None:
    src = copy_raw(mot_raw, tmp_path / "raw")
    image = src / "train" / "MOT17-05-FRCNN" / "img1" / "000003.jpg"
    image.unlink()
    with pytest.raises(BadSourceRecord, match="frame 3 of MOT17-05-FRCNN has no image") as err:
        run_pack(Mot17Packer(src, "train"), tmp_path / "p1")
    assert err.value.file == str(image)
    summary = run_pack(Mot17Packer(src, "train"), tmp_path / "p2", skip_bad=True)
    assert summary.num_skipped == 1
    ds = Mot17FrameDataset(str(summary.path))  # the meta no longer matches: the index is read from the samples
    assert [(s.name, s.count) for s in ds.sequences] == [(f"{s}-FRCNN", 21) for s in SEQS]  # 21, 21, 22 - 1
    assert [i for i in range(len(ds)) if ds[i]["first_frame"]] == [0, 21, 42]
    assert [ds[i]["frame"] for i in (43, 44)] == [2, 4]


# -- datasets ----------------------------------------------------------------------------------
def test_frame_dataset_in_sequence_order_with_first_frames(mot_packed: Path) -> None:
    ds = Mot17FrameDataset(str(mot_packed / "val_lmdb"))
    items = [ds[i] for i in range(len(ds))]
    starts = [s.start for s in ds.sequences]
    assert [i for i, item in enumerate(items) if item["first_frame"]] == starts == [0, 19, 39]
    for span in ds.sequences:
        assert [items[span.start + k]["frame"] for k in range(span.count)] == list(range(1, span.count + 1))
    item = items[5]
    assert item["img"].shape == (180, 320, 3) and item["ori_shape"] == (180, 320)
    target = (item["gt_consider"] == 1) & (item["gt_class"] == 1)
    assert np.array_equal(item["ids"], item["gt_ids"][target]) and len(item["ids"]) < len(item["gt_ids"])
    assert item["boxes"].dtype == np.float32
    batch = MotFrameCollate()([items[0], items[1]])
    assert batch["seq"] == [items[0]["seq"]] * 2 and batch["frame"].tolist() == [1, 2]
    assert isinstance(batch["gt_boxes"], list) and batch["gt_boxes"][1].shape == (len(items[1]["gt_ids"]), 4)


def flip_pipeline() -> list:
    return [RandomFlip(p=0.5), ToTensor(to_yuv=True), Normalize(128.0, 128.0)]


def test_clip_lengths_follow_the_schedule_within_one_sequence(mot_packed: Path) -> None:
    ds = Mot17ClipDataset(
        str(mot_packed / "train_lmdb"), [RandomFlip(p=0.5)], seed=1, length_schedule=[[0, 2], [2, 3], [4, 5]]
    )
    frames = Mot17FrameDataset(str(mot_packed / "train_lmdb"))
    for epoch, length in [(0, 2), (1, 2), (2, 3), (4, 5), (30, 5)]:
        ds.set_epoch(epoch)
        assert ds.clip_length == length
        intervals = set()
        for index in range(0, len(ds), 4):
            clip = ds[index]
            assert clip["clip_length"] == length and clip["img"].shape == (length, 180, 320, 3)
            span = frames.span(index)
            assert clip["seq"] == span.name
            steps = np.diff(clip["frames"])
            assert np.all(steps == clip["interval"]) and 1 <= clip["interval"] <= 10
            assert clip["frames"][0] >= 1 and clip["frames"][-1] <= span.count
            intervals.add(clip["interval"])
        assert len(intervals) >= 3
    with pytest.raises(ValueError, match="epochs must increase"):
        Mot17ClipDataset(str(mot_packed / "train_lmdb"), length_schedule=[[0, 2], [0, 3]])


def test_a_clip_is_flipped_as_a_whole_and_its_targets_with_it(mot_packed: Path) -> None:
    ds = Mot17ClipDataset(str(mot_packed / "train_lmdb"), flip_pipeline(), seed=7, length_schedule=[[0, 4]])
    plain = Mot17FrameDataset(str(mot_packed / "train_lmdb"), [ToTensor(to_yuv=True), Normalize(128.0, 128.0)])
    flips = []
    for index in range(0, len(ds), 7):
        clip = ds[index]
        flips.append(clip["flipped"])
        start = ds.span(index).start
        for t, frame in enumerate(clip["frames"]):
            ref = plain[start + frame - 1]
            expected = torch.flip(ref["img"], dims=[2]) if clip["flipped"] else ref["img"]
            assert torch.equal(clip["img"][t], expected)  # every frame flipped, or none
            boxes = ref["boxes"].astype(np.float64)
            if clip["flipped"]:
                boxes = np.stack([320 - boxes[:, 2], boxes[:, 1], 320 - boxes[:, 0], boxes[:, 3]], axis=1)
            boxes = boxes.clip([0, 0, 0, 0], [320, 180, 320, 180])
            cxcywh = np.stack(
                [
                    (boxes[:, 0] + boxes[:, 2]) / 640,
                    (boxes[:, 1] + boxes[:, 3]) / 360,
                    (boxes[:, 2] - boxes[:, 0]) / 320,
                    (boxes[:, 3] - boxes[:, 1]) / 180,
                ],
                axis=1,
            )
            np.testing.assert_allclose(clip["target_boxes"][t].numpy(), cxcywh, atol=1e-6)
            assert torch.equal(clip["target_ids"][t], torch.as_tensor(ref["ids"]))
            assert clip["target_boxes"][t].min() >= 0 and clip["target_boxes"][t].max() <= 1
    assert any(flips) and not all(flips)
    batch = MotClipCollate()([ds[0], ds[1]])
    assert len(batch["img"]) == 2 and batch["img"][0].shape[0] == 4 and len(batch["target_boxes"][1]) == 4


def test_scale_and_crop_are_drawn_once_per_clip(mot_packed: Path) -> None:
    frames = Mot17FrameDataset(str(mot_packed / "train_lmdb"))
    clip = [frames[i] for i in (3, 5, 7, 9)]
    scales = [160, 176, 192, 208]
    pipeline = ClipTransforms(
        [
            RandomFlip(p=0.5),
            MotRandomSelect(
                [MotRandomResize(scales, max_size=400)],
                [MotRandomResize([120, 150]), MotRandomSizeCrop(80, 150), MotRandomResize(scales, max_size=400)],
            ),
        ]
    )
    crops = 0
    for seed in range(12):
        out = pipeline(clip, np.random.default_rng(seed))
        assert len({f["img"].shape for f in out}) == 1
        assert len({f["flipped"] for f in out}) == 1
        assert len({f.get("crop_offset") for f in out}) == 1 and len({f["scale_factor"] for f in out}) == 1
        crops += "crop_offset" in out[0]
        h, w = out[0]["img"].shape[:2]
        assert min(h, w) in scales and max(h, w) <= 400
        for f in out:
            assert len(f["boxes"]) == len(f["ids"])
            if "crop_offset" in f:  # cropped boxes are clipped to the window (then resized with it)
                assert np.all((f["boxes"][:, [0, 2]] >= 0) & (f["boxes"][:, [0, 2]] <= w))
    assert 0 < crops < 12


def test_clip_transforms_refuse_content_dependent_draws() -> None:
    def greedy(sample: dict, rng: np.random.Generator) -> dict:
        rng.random(len(sample["boxes"]))  # one draw per box: differs from frame to frame
        return sample

    frames = [{"img": np.zeros((8, 8, 3), np.uint8), "boxes": np.zeros((n, 4), np.float32)} for n in (1, 2)]
    with pytest.raises(ValueError, match="not augmented alike"):
        ClipTransforms([greedy])(frames, np.random.default_rng(0))


def test_multi_scale_sizes_follow_detr() -> None:
    from hat_motr.transforms import resized_shape

    assert resized_shape(180, 320, 160) == (160, 284)
    assert resized_shape(180, 320, 160, max_size=250) == (141, 250)  # the long side capped
    assert resized_shape(320, 180, 180) == (320, 180)  # already there
    sample = {"img": np.zeros((180, 320, 3), np.uint8), "boxes": np.array([[32.0, 18.0, 64.0, 90.0]])}
    out = MotRandomResize([90], max_size=1000)(sample, np.random.default_rng(0))
    assert out["img"].shape == (90, 160, 3) and out["scale_factor"] == (0.5, 0.5)
    np.testing.assert_allclose(out["boxes"], [[16, 9, 32, 45]])


def test_packing_in_worker_processes_gives_the_same_pack(mot_raw: Path, mot_packed: Path, tmp_path: Path) -> None:
    summary = run_pack(Mot17Packer(mot_raw, "val"), tmp_path, num_workers=2)
    ours, theirs = PackReader(summary.path), PackReader(mot_packed / "val_lmdb")
    assert len(ours) == len(theirs) and all(ours.raw(i) == theirs.raw(i) for i in range(len(ours)))
    assert ours.meta["sequences"] == theirs.meta["sequences"]
