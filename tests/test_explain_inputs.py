"""``explain`` over webdataset tar shards and parquet files: every good item is explained, a corrupt image,
a bad row or a malformed metadata member is reported by shard and row."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from jaxplain.cli import main
from jaxplain.counterfactual.bank import build_bank
from jaxplain.data import fashion_mnist
from jaxplain.jobs import read_jsonl_parts
from tests.conftest import TINY

CLASSES = "shirt,trousers,bag,sandal"


def _png(a) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    images, _ = fashion_mnist.load_shipped_test()
    bank, _ = build_bank(tiny_model, images=list(images[100:400]), backend="exact", progress=False)
    return root, images, bank.save(root / "bank")


def test_explain_over_tar_shards(setup, tmp_path, capsys):
    _, images, bank = setup
    for s in range(2):
        with wds.TarWriter(str(tmp_path / f"{s:06d}.tar")) as w:
            for i in range(6):
                key = f"{s:04d}{i:04d}"
                png = b"\x89PNG broken" if (s, i) == (1, 2) else _png(images[s * 6 + i])
                w.write({"__key__": key, "png": png, "txt": "a photo of a bag", "json": {"id": key, "url": "x"}})
    out = tmp_path / "out"
    args = ["explain", "--model", str(TINY), "--bank", str(bank), "--pairs", str(tmp_path / "{000000..000001}.tar")]
    assert main([*args, "--out", str(out), "--want", "other-class", "--classes", CLASSES]) == 1
    res = read_jsonl_parts(out)
    assert [r["key"] for r in res] == [f"{s:04d}{i:04d}" for s in range(2) for i in range(6)]
    bad = [r for r in res if r["status"] == "error"]
    assert (
        len(bad) == 1
        and bad[0]["key"] == "00010002"
        and bad[0]["error"].startswith(f"{tmp_path / '000001.tar'}: sample 00010002")
    )
    assert all(r["status"] in ("found", "not_found", "already") and r["id"] == r["key"] for r in res if r not in bad)
    # The same images given as JSON lines give the same answers.
    lines = tmp_path / "pairs.jsonl"
    lines.write_text("".join(json.dumps({"image": f"fashion-mnist-test:{n}"}) + "\n" for n in range(12)))
    assert main(["explain", "--model", str(TINY), "--bank", str(bank), "--pairs", str(lines), "--out",
                 str(tmp_path / "lines.jsonl"), "--want", "other-class", "--classes", CLASSES]) == 0  # fmt: skip
    ref = [json.loads(x) for x in (tmp_path / "lines.jsonl").read_text().splitlines()]
    for r, q in zip(res, ref):
        if r["status"] != "error":
            assert r["status"] == q["status"]
            assert [c["bank_row"] for c in r["counterfactuals"]] == [c["bank_row"] for c in q["counterfactuals"]]
    assert "sample 00010002" in capsys.readouterr().err


def test_explain_over_parquet(setup, tmp_path):
    _, images, bank = setup
    table = pa.table(
        {
            "key": [f"k{i}" for i in range(5)],
            "image": [_png(images[i]) if i != 3 else None for i in range(5)],
            "caption": ["a photo of a bag"] * 5,
            "want": ["similarity<=0.1", "other-class", "runner-up", "other-class", "prob:bag>=1.5"],
        }
    )
    pq.write_table(table, tmp_path / "pairs.parquet")
    out = tmp_path / "res.jsonl"
    args = ["explain", "--model", str(TINY), "--bank", str(bank), "--pairs", str(tmp_path / "pairs.parquet")]
    assert main([*args, "--out", str(out), "--classes", CLASSES]) == 1
    res = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["key"] for r in res] == [f"k{i}" for i in range(5)]
    assert [r["status"] == "error" for r in res] == [False, False, False, True, True]
    assert res[3]["error"].startswith(f"{tmp_path / 'pairs.parquet'}: row 3")
    assert "row 4" in res[4]["error"]
