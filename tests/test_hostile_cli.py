"""Hostile input on the command line: bad numbers, bad options, bad lines and odd text files are each an
error of their own, with an exit status that means one thing, and the good items are still written."""

import json

import numpy as np
import pytest

from jaxplain.cli import main
from jaxplain.commands.common import EXIT_BAD_ITEMS, EXIT_ERROR, EXIT_INTERNAL, EXIT_OK
from jaxplain.counterfactual.bank import build_bank
from jaxplain.data import fashion_mnist
from jaxplain.data.lines import read_items, read_lines, split_lines
from jaxplain.errors import InputError
from jaxplain.objectives import Want
from tests.conftest import TINY

CLASSES = ["shirt", "trousers", "bag", "sandal"]
BANK_SIZE = 40


@pytest.fixture(scope="module")
def bank_dir(tiny_model, tmp_path_factory):
    images, _ = fashion_mnist.load_shipped_test()
    bank, _ = build_bank(tiny_model, images=list(images[100 : 100 + BANK_SIZE]), backend="exact", progress=False)
    return bank.save(tmp_path_factory.mktemp("bank") / "fm")


def explain(pairs_rows, bank_dir, tmp_path, *extra):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in pairs_rows))
    out = tmp_path / "results.jsonl"
    code = main(["explain", "--model", str(TINY), "--bank", str(bank_dir), "--pairs", str(pairs), "--out", str(out),
                 *extra])  # fmt: skip
    return code, [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prob:bag>=1.2.3", "wanted outcome 'prob:bag>=1.2.3': '1.2.3' is not a decimal number such as 0.9"),
        ("prob:bag>=e", "wanted outcome 'prob:bag>=e': 'e' is not a decimal number such as 0.9"),
        ("similarity<=-", "wanted outcome 'similarity<=-': '-' is not a decimal number such as 0.9"),
        ("similarity>=", "wanted outcome 'similarity>=': a number is missing at the end"),
        ("similarity>=nan", "wanted outcome 'similarity>=nan': 'nan' is not a decimal number such as 0.9"),
        ("prob:bag<=inf", "wanted outcome 'prob:bag<=inf': 'inf' is not a decimal number such as 0.9"),
        ("top:2.5", "wanted outcome 'top:2.5': '2.5' is not a whole number such as 5"),
        ("not-top:x", "wanted outcome 'not-top:x': 'x' is not a whole number such as 5"),
        ("top:0", "wanted outcome 'top:0': k must be at least 1"),
    ],
)
def test_malformed_numbers_are_input_errors_that_quote_them(text, message):
    with pytest.raises(InputError) as e:
        Want.parse(text)
    assert str(e.value) == message


def test_numbers_that_are_numbers_are_read():
    assert Want.parse("similarity >= -.25").value == -0.25
    assert Want.parse("prob:a b<=1e-1") == Want("prob", "a b", "<=", 0.1)
    assert Want.parse("not-top:12").value == 12


def test_bad_lines_are_their_own_errors_and_the_group_is_explained(bank_dir, tmp_path, capsys):
    """One line with a malformed number, another with top:K beyond the bank, one with duplicate classes and
    one with other-class over one class: each is an error naming its line; the lines around them, in the same
    group, are explained as they are without them."""
    good = {"image": "fashion-mnist-test:0", "classes": CLASSES, "want": "other-class"}
    rows = [
        good,
        {**good, "want": "prob:bag>=1.2.3"},
        {"image": "fashion-mnist-test:1", "text": "a bag", "want": f"top:{BANK_SIZE}"},
        {"image": "fashion-mnist-test:1", "text": "a bag", "want": "top:3"},
        {**good, "classes": ["bag", "shirt", "bag"]},
        {**good, "classes": ["bag"]},
        {**good, "image": "fashion-mnist-test:2", "id": "last"},
    ]
    code, res = explain(rows, bank_dir, tmp_path)
    assert code == EXIT_BAD_ITEMS
    assert [r["status"] == "error" for r in res] == [False, True, True, False, True, True, False]
    assert res[1]["error"] == "line 2: wanted outcome 'prob:bag>=1.2.3': '1.2.3' is not a decimal number such as 0.9"
    n = BANK_SIZE
    assert res[2]["error"] == f"line 3: 'top:{n}' ranks among the image bank's {n} items: k must be below {n}"
    assert res[4]["error"] == "line 5: class name 'bag' is given twice (classes 0 and 2); class names must differ"
    assert res[5]["error"] == "line 6: other-class needs at least two classes; the pair has one ('bag')"
    assert res[6]["id"] == "last"
    err = capsys.readouterr().err
    assert "Traceback" not in err and "4 bad lines" in err

    # the good lines get exactly what they get alone
    code, alone = explain([rows[0], rows[3], rows[6]], bank_dir, tmp_path)
    assert code == EXIT_OK
    for a, b in zip(alone, [res[0], res[3], res[6]]):
        assert {k: v for k, v in a.items() if k not in ("line", "pair")} == {
            k: v for k, v in b.items() if k not in ("line", "pair")
        }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "--k", "0"], "argument --k: must be at least 1, got 0"),
        (["explain", "--k", "-1"], "argument --k: must be at least 1, got -1"),
        (["explain", "--top", "0"], "argument --top: must be at least 1, got 0"),
        (["explain", "--top", "-1"], "argument --top: must be at least 1, got -1"),
        (["explain", "--chunk", "two"], "argument --chunk: 'two' is not a whole number"),
        (
            ["explain", "--want", "prob:Bag>=1.2.3"],
            "argument --want: wanted outcome 'prob:Bag>=1.2.3': '1.2.3' is not a decimal number such as 0.9",
        ),
        (["evaluate", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
        (["evaluate", "--fraction", "2"], "argument --fraction: must lie in (0, 1], got 2"),
        (["evaluate", "--fraction", "0"], "argument --fraction: must lie in (0, 1], got 0"),
        (["evaluate", "--radius", "nan"], "argument --radius: must be a finite number above 0, got nan"),
        (["classify", "--limit", "0"], "argument --limit: must be at least 1, got 0"),
        (["embed", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
        (["bank", "build", "--recall", "1.5"], "argument --recall: must lie in (0, 1], got 1.5"),
        (["train", "--flip", "1.5"], "argument --flip: must lie in [0, 1], got 1.5"),
    ],
)
def test_bad_options_are_refused_by_argparse_before_any_work(argv, message, capsys, monkeypatch):
    import jaxplain.models

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(jaxplain.models, "load", no_load)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].endswith(f"error: {message}") and "Traceback" not in err


def test_exit_statuses_mean_one_thing_each(capsys, monkeypatch, tmp_path):
    """1 is only 'bad items skipped'; a failed job is 2 with one line; a bug is 3, without a traceback."""
    import jaxplain.commands.embed as embed

    argv = ["embed", "--model", str(TINY), "--texts", "t.txt", "--out", str(tmp_path / "e.npy")]

    def crash(args):
        raise RuntimeError("something inside broke")

    def no_memory(args):
        raise MemoryError

    def input_error(args):
        raise InputError("x.png: no such file")

    def disk_full(args):
        raise OSError(28, "No space left on device", "out/e.npy")

    bug = "internal error: RuntimeError: something inside broke (a bug in jaxplain; JAXPLAIN_DEBUG=1 shows where)"
    memory = "error: out of memory; try a smaller --batch-size (or --chunk), or a machine with more memory"
    for func, code, line in [
        (crash, EXIT_INTERNAL, f"jaxplain: {bug}"),
        (no_memory, EXIT_ERROR, f"jaxplain: {memory}"),
        (input_error, EXIT_ERROR, "jaxplain: error: x.png: no such file"),
        (disk_full, EXIT_ERROR, "jaxplain: error: out/e.npy: No space left on device"),
    ]:
        monkeypatch.setattr(embed, "run", func)  # a sub-command's function is looked up when the parser is built
        assert main(argv) == code
        err = capsys.readouterr().err
        assert err.strip() == line and "Traceback" not in err

    monkeypatch.setattr(embed, "run", crash)
    monkeypatch.setenv("JAXPLAIN_DEBUG", "1")
    assert main(argv) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("(a bug in jaxplain; the traceback is above)")


def test_lines_split_on_newlines_only_a_bom_is_dropped_and_a_bad_byte_names_its_line(tmp_path):
    data = "\ufeffone\u2028still one\ntwo\x0cstill two\r\nthree\x85\n".encode()
    lines, problems = split_lines(data)
    assert lines == ["one\u2028still one", "two\x0cstill two", "three\x85"] and problems == {}
    assert split_lines(b"a\n\nb") == (["a", "", "b"], {})
    assert split_lines(b"") == ([], {})
    bad = tmp_path / "classes.txt"
    bad.write_bytes(b"bag\nsh\xffirt\nshoe\n\xfe\n")
    with pytest.raises(InputError) as e:
        read_lines(bad, "class names")
    assert str(e.value) == (
        f"{bad}: line 2: not UTF-8 text (byte 0xff at column 3) (and 1 more lines); class names must be UTF-8 text"
    )
    assert read_items(bad, "texts") == (
        ["bag", None, "shoe", None],
        {2: "not UTF-8 text (byte 0xff at column 3)", 4: "not UTF-8 text (byte 0xfe at column 1)"},
    )
    with pytest.raises(InputError, match=f"^{tmp_path}: a directory, not a file of texts$"):
        read_lines(tmp_path, "texts")


def test_embed_texts_keeps_line_numbers_and_skips_only_the_bad_line(tiny_model, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_bytes("\ufeffa red bag\u2028with straps\n".encode() + b"a sh\xffirt\n" + b"a sandal\n")
    out = tmp_path / "e.npy"
    code = main(["embed", "--model", str(TINY), "--texts", str(texts), "--out", str(out)])
    assert code == EXIT_BAD_ITEMS
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["items"] == ["a red bag\u2028with straps", "a sandal"]
    assert manifest["errors"] == [{"item": f"{texts}:2", "error": "not UTF-8 text (byte 0xff at column 5)"}]
    emb = np.load(out)
    want = np.asarray(tiny_model.encode_texts(["a red bag\u2028with straps", "a sandal"]))
    np.testing.assert_allclose(emb, want, atol=1e-6)
    assert f"jaxplain: skipped {texts}:2: not UTF-8 text (byte 0xff at column 5)" in capsys.readouterr().err


def test_duplicate_class_names_on_the_command_line_fail_the_job(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    classes = "Bag,Shirt,Bag,T,U,V,W,X,Y,Z"  # ten names for the ten classes of the shipped test set
    code = main(["classify", "--model", str(TINY), "--limit", "4", "--classes", classes, "--out", str(out)])
    assert code == EXIT_ERROR and not out.exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "jaxplain: error: class name 'Bag' is given twice (classes 0 and 2); class names must differ"
    )


def test_duplicate_classes_given_to_explain_fail_before_any_work(capsys, monkeypatch, tmp_path):
    import jaxplain.models

    monkeypatch.setattr(jaxplain.models, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    argv = ["explain", "--model", str(TINY), "--bank", "b", "--pairs", "p.jsonl", "--out", str(tmp_path / "r.jsonl"),
            "--classes", "Bag, Shirt,Bag"]  # fmt: skip
    assert main(argv) == EXIT_ERROR
    assert capsys.readouterr().err.strip() == (
        "jaxplain: error: --classes 'Bag, Shirt,Bag': 'Bag' given twice; class names must differ"
    )


def test_a_malformed_template_is_an_error_of_its_line(bank_dir, tmp_path):
    good = {"image": "fashion-mnist-test:0", "classes": CLASSES, "want": "other-class"}
    rows = [
        {**good, "templates": ["a {} and a {}"]},
        {**good, "templates": [3]},
        {**good, "templates": ["{x}: {}"]},
        good,
    ]
    code, res = explain(rows, bank_dir, tmp_path)
    assert code == EXIT_BAD_ITEMS
    assert [r["error"] for r in res[:3]] == [
        "line 1: template 'a {} and a {}' must hold one '{}' and no other braces (write '{{' and '}}' for literal "
        "ones): Replacement index 1 out of range for positional args tuple",
        "line 2: template 3 is not a string",
        "line 3: template '{x}: {}' must hold one '{}' and no other braces (write '{{' and '}}' for literal ones): 'x'",
    ]
    assert res[3]["status"] in ("found", "not_found")


def test_bank_build_texts_skips_a_line_that_is_not_utf8_and_keeps_line_ids(tiny_model, tmp_path, capsys):
    from jaxplain.counterfactual.bank import Bank

    texts = tmp_path / "captions.txt"
    texts.write_bytes("a red bag\u2028with straps\n".encode() + b"a sh\xffirt\n" + b"a sandal\n")
    out = tmp_path / "bank"
    assert main(["bank", "build", "--model", str(TINY), "--texts", str(texts), "--out", str(out)]) == EXIT_BAD_ITEMS
    assert f"jaxplain: skipped {texts}:2: not UTF-8 text (byte 0xff at column 5)" in capsys.readouterr().err
    bank = Bank.load(out, model=tiny_model)
    assert bank.items == ["a red bag\u2028with straps", "a sandal"] and bank.ids == ["text:1", "text:3"]
    np.testing.assert_allclose(bank.embeddings, tiny_model.encode_texts(bank.items), atol=1e-6)
