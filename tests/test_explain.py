"""``jaxplain explain``: one result line per pair in input order; bad lines named, the rest processed."""

import json
import shutil

import numpy as np
import pytest

import jaxplain
from jaxplain.cli import main
from jaxplain.counterfactual.bank import build_bank
from jaxplain.data import fashion_mnist
from tests.conftest import FIXTURES, TINY

CLASSES = ["shirt", "trousers", "bag", "sandal"]


@pytest.fixture(scope="module")
def bank_dir(tiny_model, tmp_path_factory):
    images, _ = fashion_mnist.load_shipped_test()
    bank, _ = build_bank(tiny_model, images=list(images[100:400]), backend="exact", progress=False)
    return bank.save(tmp_path_factory.mktemp("bank") / "fm")


def write_pairs(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_explain_with_bad_lines(tiny_model, bank_dir, tmp_path, capsys):
    shutil.copy(FIXTURES / "images" / "01_rgb.png", tmp_path / "shoe.png")
    rows = [
        {"id": "a", "image": "fashion-mnist-test:0", "classes": CLASSES, "want": "other-class"},
        {"image": "shoe.png", "text": "a photo of a bag", "want": "similarity<=0.0"},
        '{"image": "fashion-mnist-test:1", "want": ',  # malformed
        {"image": "missing.png", "classes": CLASSES, "want": "runner-up"},
        {"image": "fashion-mnist-test:2", "classes": CLASSES, "want": "class:hat"},
        {"image": "fashion-mnist-test:3", "classes": CLASSES, "want": "make it pretty"},
        {"image": "fashion-mnist-test:4", "classes": CLASSES, "want": "runner-up", "colour": "red"},
        {"image": "fashion-mnist-test:99999", "classes": CLASSES, "want": "runner-up"},
        {"id": "last", "image": "fashion-mnist-test:5", "classes": CLASSES, "want": "runner-up"},
    ]
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, rows)
    out = tmp_path / "results.jsonl"
    code = main(["explain", "--model", str(TINY), "--bank", str(bank_dir), "--pairs", str(pairs), "--out", str(out)])
    assert code == 1
    res = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in res] == list(range(1, 10))
    status = [r["status"] for r in res]
    assert status[2:8] == ["error"] * 6
    assert all(s in ("found", "not_found", "already") for s in status[:2] + status[8:])
    errors = [r["error"] for r in res[2:8]]
    assert errors[0].startswith("line 3: not valid JSON")
    assert errors[1].startswith("line 4:") and "missing.png: no such file" in errors[1]
    assert errors[2] == "line 5: unknown class 'hat'; the classes are shirt, trousers, bag, sandal"
    assert errors[3].startswith("line 6: wanted outcome 'make it pretty' not understood")
    assert errors[4].startswith("line 7: unknown field(s) colour")
    assert "line 8: 'fashion-mnist-test:99999': the shipped test set has images 0 to 9999" == errors[5]
    assert res[0]["id"] == "a" and res[8]["id"] == "last"
    err = capsys.readouterr().err
    assert "line 5: unknown class 'hat'" in err and "6 bad lines" in err

    # the results agree with the library call on the same pair, and every item is valid
    images, _ = fashion_mnist.load_shipped_test()
    lib = jaxplain.counterfactuals(
        tiny_model, [images[0]], want="other-class", bank=jaxplain.Bank.load(bank_dir), classes=CLASSES
    )
    assert [c["bank_id"] for c in res[0]["counterfactuals"]] == [c.bank_id for c in lib.pairs[0].counterfactuals]
    for c in res[0]["counterfactuals"]:
        assert c["predicted"] != res[0]["original_predicted"]


def test_bank_from_another_model_is_a_clear_error(tiny_model, bank_dir, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    other = tmp_path / "other-model"
    shutil.copytree(TINY, other)
    state = load_file(other / "model.safetensors")
    state["logit_scale"] = np.asarray(state["logit_scale"] + 0.5, np.float32)
    save_file(state, other / "model.safetensors")
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, [{"image": "fashion-mnist-test:0", "classes": CLASSES, "want": "other-class"}])
    args = ["explain", "--model", str(other), "--bank", str(bank_dir), "--pairs", str(pairs)]
    assert main([*args, "--out", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxplain: error:") and tiny_model.fingerprint in err and "Traceback" not in err
