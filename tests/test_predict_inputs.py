"""`gitops predict`'s input files: CSV headers picked by feature name, image files decoded as training does.

The rules run on real files with an `InputSpec`; the end-to-end checks use the session's trained
`shapes-cnn` (an image folder) and `tabular-mlp` (a Parquet table) runs (conftest.trained_examples).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gitops.errors import UsageError
from gitops.serve import inputs
from gitops.serve.inputs import InputSpec

REPO = Path(__file__).resolve().parents[1]
TABLE = InputSpec("tab", (3,), ("f_a", "f_b", "f_c"))


def _cli(*args: str):
    from gitops.cli import app

    return CliRunner().invoke(app, ["predict", *args])


# --- the rules, on files ------------------------------------------------------------------------------------


def test_csv_header_picks_columns_by_name_and_ignores_the_rest(tmp_path: Path) -> None:
    (tmp_path / "named.csv").write_text("\ufefflabel,f_c, f_a ,f_b,id\n1,3,1,2,x\n\n0,6,4,5,y\n")  # BOM, blank line
    np.testing.assert_array_equal(inputs.read_csv(tmp_path / "named.csv", TABLE), [[1, 2, 3], [4, 5, 6]])
    (tmp_path / "plain.csv").write_text("1,2,3\n4,5,6\n")  # no header: by position
    np.testing.assert_array_equal(inputs.read_csv(tmp_path / "plain.csv", TABLE), [[1, 2, 3], [4, 5, 6]])
    (tmp_path / "short.csv").write_text("f_c,f_a,label\n3,1,0\n")
    with pytest.raises(UsageError, match="no column 'f_b' in the header \\(f_c, f_a, label\\); tab takes the "
                                         "columns f_a, f_b, f_c"):
        inputs.read_csv(tmp_path / "short.csv", TABLE)
    (tmp_path / "twice.csv").write_text("f_a,f_b,f_c,f_a\n1,2,3,4\n")
    with pytest.raises(UsageError, match="names the column 'f_a' more than once"):
        inputs.read_csv(tmp_path / "twice.csv", TABLE)
    (tmp_path / "ragged.csv").write_text("f_a,f_b,f_c\n1,2,3\n4,5\n")
    with pytest.raises(UsageError, match="line 3 has 2 cells, the header 3"):
        inputs.read_csv(tmp_path / "ragged.csv", TABLE)
    (tmp_path / "word.csv").write_text("f_a,f_b,f_c\n1,2,3\n4,five,6\n")
    with pytest.raises(UsageError, match="line 3: 'five' is not a number"):
        inputs.read_csv(tmp_path / "word.csv", TABLE)


def test_csv_header_without_known_names_is_read_by_position_if_it_fits(tmp_path: Path) -> None:
    unnamed = InputSpec("wine", (3,))
    (tmp_path / "fits.csv").write_text("x,y,z\n1,2,3\n")
    np.testing.assert_array_equal(inputs.read_csv(tmp_path / "fits.csv", unnamed), [[1, 2, 3]])
    (tmp_path / "label.csv").write_text("x,y,z,label\n1,2,3,0\n")
    with pytest.raises(UsageError, match="4 columns but wine takes 3 features, and its feature names are not "
                                         "recorded"):
        inputs.read_csv(tmp_path / "label.csv", unnamed)


def test_images_only_for_image_models_and_shapes_must_fit(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (24, 24), (10, 20, 30)).save(tmp_path / "a.png")
    with pytest.raises(UsageError, match="an image, but tab was not trained on image files"):
        inputs.read_inputs(tmp_path / "a.png", spec=TABLE)
    assert inputs.is_image(Path("x.JPEG")) and inputs.is_image(Path("x.webp"))
    assert not inputs.is_image(Path("x.npy")) and not inputs.is_image(Path("x.h5"))  # a Pillow stub format
    (tmp_path / "bad.png").write_bytes(b"not a png")
    images = InputSpec("shapes", (16, 16, 3), image_size=(16, 16), channels=3)
    with pytest.raises(UsageError, match="bad.png: cannot decode the image"):
        inputs.read_inputs(tmp_path / "bad.png", spec=images)
    assert inputs.read_inputs(tmp_path / "a.png", spec=images).shape == (1, 16, 16, 3)
    for shape in ((1, 24, 24, 3), (1, 32, 32, 3)):  # the second holds 4x16x16x3 numbers: not cut into 4 examples
        with pytest.raises(UsageError, match=r"do not hold examples of shape \(16, 16, 3\); shapes was trained on "
                                             r"image files: give the images themselves"):
            inputs.as_examples(np.zeros(shape, np.float32), images, Path("x.npy"))
    for shape, n in (((5, 16, 16, 3), 5), ((16, 16, 3), 1), ((2, 768), 2), ((768,), 1)):
        assert inputs.as_examples(np.zeros(shape, np.float32), images, Path("x.npy")).shape == (n, 16, 16, 3)


# --- end to end, on the session's trained examples -------------------------------------------------------------


def test_predict_images_like_the_training_pipeline(trained_examples, tmp_path: Path) -> None:
    from PIL import Image

    import gitops
    from gitops.learn import sources, streaming

    run = trained_examples["shapes-cnn"]
    loaded = gitops.load(str(run))
    ds = loaded.config.data.dataset
    images = REPO / "models" / "shapes-cnn" / "images" / "test"
    files = [sorted((images / kind).glob("*.png"))[0] for kind in ("circle", "cross", "square", "triangle")]
    Image.open(files[0]).convert("RGB").save(tmp_path / "circle.JPG", quality=90)  # any format training reads
    files.append(tmp_path / "circle.JPG")
    # the training pipeline's batch: its source, its scaling (ReadBatch), then the model
    source = sources.ImageFolderSource([str(f) for f in files], np.zeros(len(files)), ds["image_size"], ds["channels"])
    pre = loaded.preprocessing
    x, _ = streaming.ReadBatch(source, np.arange(len(files)), pre.shift, pre.divisor)(np.arange(len(files)))
    expected = np.asarray(loaded.predict_fn(x))
    done = _cli(str(run), *[a for f in files for a in ("--input", str(f))])
    assert done.exit_code == 0, done.output
    got = json.loads(done.output)["predictions"]
    assert [p["input"] for p in got] == [str(f) for f in files]
    np.testing.assert_allclose([p["probabilities"] for p in got], expected, atol=2e-6)
    assert [p["label"] for p in got[:4]] == ["circle", "cross", "square", "triangle"]
    one = json.loads(_cli(str(run), "--input", str(files[1])).output)["predictions"]
    assert len(one) == 1 and "input" not in one[0] and one[0]["label"] == "cross"

    np.save(tmp_path / "big.npy", np.zeros((1, 24, 24, 1), np.float32))  # not decoded/resized by the user
    done = _cli(str(run), "--input", str(tmp_path / "big.npy"))
    assert done.exit_code == 2 and "give the images themselves" in done.output, done.output
    done = _cli(str(trained_examples["tabular-mlp"]), "--input", str(files[0]))
    assert done.exit_code == 2 and "was not trained on image files (it was trained on 'parquet' data)" in done.output


def test_predict_csv_by_the_recorded_feature_names(trained_examples, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    run = trained_examples["tabular-mlp"]
    recorded = json.loads((run / "preprocessing.json").read_text())["features"]
    assert recorded == [f"f{i:02d}" for i in range(16)]  # feature_prefix: f, expanded at training
    table = pq.read_table(REPO / "models" / "tabular-mlp" / "table" / "part-0.parquet").slice(0, 40).to_pydict()
    x = np.asarray([table[name] for name in recorded], np.float32).T
    np.save(tmp_path / "x.npy", x)
    reference = json.loads(_cli(str(run), "--input", str(tmp_path / "x.npy")).output)["predictions"]
    assert len({p["class"] for p in reference}) > 1  # column order matters for these rows
    shuffled = ["label", *reversed(recorded)]
    rows = [",".join(shuffled)] + [",".join(repr(float(table[c][i])) for c in shuffled) for i in range(40)]
    (tmp_path / "rows.csv").write_text("\n".join(rows) + "\n")
    done = _cli(str(run), "--input", str(tmp_path / "rows.csv"))
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["predictions"] == reference
    (tmp_path / "short.csv").write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")  # f00 dropped
    done = _cli(str(run), "--input", str(tmp_path / "short.csv"))
    assert done.exit_code == 2 and "no column 'f00' in the header" in done.output, done.output

    # a run trained before the names were recorded (feature_prefix): a header is read by position
    old = tmp_path / "old-run"
    shutil.copytree(run, old)
    prep = json.loads((old / "preprocessing.json").read_text())
    del prep["features"]
    (old / "preprocessing.json").write_text(json.dumps(prep))
    done = _cli(str(old), "--input", str(tmp_path / "rows.csv"))
    assert done.exit_code == 2 and "17 columns but" in done.output and "by position" in done.output, done.output
    ordered = [",".join(recorded)] + [",".join(repr(float(table[c][i])) for c in recorded) for i in range(40)]
    (tmp_path / "ordered.csv").write_text("\n".join(ordered) + "\n")
    done = _cli(str(old), "--input", str(tmp_path / "ordered.csv"))
    assert done.exit_code == 0 and json.loads(done.output)["predictions"] == reference, done.output


def test_serve_takes_image_files_as_b64_instances_like_tf_serving(trained_examples, tmp_path: Path) -> None:
    # TF Serving's REST API carries binary data as {"b64": ...}: the server decodes each image with the
    # training decode and answers what `gitops predict` answers for the same files
    import base64
    import warnings

    from PIL import Image
    from test_serve import wait_ready

    from gitops.serve.server import Limits, build

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    run = trained_examples["shapes-cnn"]
    images = REPO / "models" / "shapes-cnn" / "images" / "test"
    files = [sorted((images / kind).glob("*.png"))[1] for kind in ("circle", "cross", "square", "triangle")]
    Image.open(files[2]).convert("RGB").resize((40, 40)).save(tmp_path / "square.jpg", quality=95)
    files.append(tmp_path / "square.jpg")
    want = json.loads(_cli(str(run), *[a for f in files for a in ("--input", str(f))]).output)["predictions"]
    b64 = [base64.b64encode(f.read_bytes()).decode() for f in files]
    Image.new("L", (300, 260)).save(tmp_path / "big.png")

    server = build(str(run), limits=Limits(max_image_pixels=250 * 250))
    with TestClient(server.app) as client:
        wait_ready(client, timeout=120)
        meta = client.get("/v1/models/shapes-cnn/metadata").json()
        assert meta["gitops"]["signature"]["image_inputs"] == {"b64": True, "height": 16, "width": 16, "channels": 1}
        r = client.post("/v1/models/shapes-cnn:predict", json={"instances": [{"b64": s} for s in b64]})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["predictions"], [p["probabilities"] for p in want], atol=1e-6)
        named = {"inputs": [{"inputs": {"b64": s}} for s in b64[:2]]}  # columnar, named
        assert np.allclose(client.post("/v1/models/shapes-cnn:predict", json=named).json()["outputs"],
                           [p["probabilities"] for p in want[:2]], atol=1e-6)
        bad = {"not base64": {"b64": "%%%"}, "cannot decode the image": {"b64": base64.b64encode(b"GIF89a?").decode()},
               "the image is 300x260 pixels; at most 62500": {"b64": base64.b64encode((tmp_path / "big.png").read_bytes()).decode()}}
        for message, item in bad.items():
            r = client.post("/v1/models/shapes-cnn:predict", json={"instances": [{"b64": b64[0]}, item]})
            assert r.status_code == 400 and "instances[1]" in r.json()["error"] and message in r.json()["error"], r.text
            assert "object at 0x" not in r.json()["error"]  # no Python object repr

    server = build(str(trained_examples["tabular-mlp"]))
    with TestClient(server.app) as client:
        wait_ready(client, timeout=120)
        r = client.post("/v1/models/tabular-mlp:predict", json={"instances": [{"b64": b64[0]}]})
        assert r.status_code == 400 and "not trained on an image folder" in r.json()["error"], r.text
