"""Banks from tar shards, parquet files and precomputed embeddings: the same bank as from the files they
hold, bad items named by shard and row; decoding on threads gives what decoding inline gives."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxplain.batching import encode_stream
from jaxplain.cli import main
from jaxplain.counterfactual.bank import Bank, build_bank
from jaxplain.counterfactual.shards import ShardedIndex
from tests.conftest import FIXTURES, TINY

IMAGES = sorted((FIXTURES / "images").iterdir())
BUILD = ["bank", "build", "--model", str(TINY), "--index", "exact"]


@pytest.fixture(scope="module")
def file_bank(tiny_model):
    bank, errors = build_bank(tiny_model, images=IMAGES, backend="exact", progress=False)
    assert errors == []
    return bank


def _tar(path, samples):
    with tarfile.open(path, "w") as t:
        for key, members in samples:
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))


def _sample(i, path):
    return f"{i:09d}", {path.suffix.lstrip(".").lower(): path.read_bytes(), "json": json.dumps({"y": i}).encode()}


def test_bank_from_tar_shards_equals_bank_from_files_and_names_the_corrupt_sample(file_bank, tmp_path, capsys):
    # Two shards; the second holds a corrupt JPEG between good samples.
    _tar(tmp_path / "000000.tar", [_sample(i, p) for i, p in enumerate(IMAGES[:3])])
    bad = ("000003017", {"jpg": b"\xff\xd8 not a jpeg", "json": b'{"y": 99}'})
    _tar(tmp_path / "000001.tar", [_sample(3, IMAGES[3]), bad, *[_sample(i, p) for i, p in enumerate(IMAGES) if i > 3]])
    pattern = str(tmp_path / "{000000..000001}.tar")
    out = tmp_path / "bank"
    assert main([*BUILD, "--images", pattern, "--out", str(out), "--label-field", "y"]) == 1
    err = capsys.readouterr().err
    assert f"jaxplain: skipped {tmp_path / '000001.tar'}: sample 000003017: cannot read it as an image" in err
    bank = Bank.load(out)
    assert isinstance(bank.index, ShardedIndex) and bank.index.num_shards == 2  # one bank shard per tar
    assert bank.ids == [f"{i:09d}" for i in range(len(IMAGES))]
    assert bank.items[0] == f"{tmp_path / '000000.tar'}: sample 000000000"
    np.testing.assert_array_equal(bank.labels, np.arange(len(IMAGES)))
    np.testing.assert_allclose(bank.embeddings, file_bank.embeddings, atol=1e-6)


def test_bank_from_parquet_with_a_bad_row(file_bank, tmp_path, capsys):
    rows = [p.read_bytes() for p in IMAGES]
    images = [*rows[:2], None, *rows[2:]]
    table = pa.table({"key": [f"k{i}" for i in range(len(images))], "jpg": images, "label": list(range(len(images)))})
    pq.write_table(table, tmp_path / "x.parquet", row_group_size=3)
    out = tmp_path / "bank"
    assert main([*BUILD, "--images", str(tmp_path / "x.parquet"), "--out", str(out), "--label-field", "label"]) == 1
    assert (
        f"jaxplain: skipped {tmp_path / 'x.parquet'}: row 2: no image (column 'jpg' is null)" in capsys.readouterr().err
    )
    bank = Bank.load(out)
    assert bank.ids == ["k0", "k1", *(f"k{i}" for i in range(3, len(images)))]
    np.testing.assert_array_equal(bank.labels, [0, 1, *range(3, len(images))])
    np.testing.assert_allclose(bank.embeddings, file_bank.embeddings, atol=1e-6)
    # Cut into row-group shards above --shard-size: the same rows.
    assert (
        main([*BUILD, "--images", str(tmp_path / "x.parquet"), "--out", str(tmp_path / "s"), "--shard-size", "3"]) == 1
    )
    sharded = Bank.load(tmp_path / "s")
    assert sharded.index.num_shards == 3 and sharded.ids == bank.ids
    np.testing.assert_allclose(sharded.embeddings, bank.embeddings, atol=1e-6)  # other batch shapes


def test_text_bank_from_a_parquet_caption_column(tiny_model, tmp_path):
    texts = ["a photo of a coat", "a sandal", "a bag", "an ankle boot"]
    pq.write_table(pa.table({"caption": texts}), tmp_path / "t.parquet")
    assert main([*BUILD, "--texts", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "b")]) == 0
    bank = Bank.load(tmp_path / "b")
    one, _ = build_bank(tiny_model, texts=texts, progress=False)
    assert bank.items == texts and bank.kind == "text"
    np.testing.assert_allclose(bank.embeddings, one.embeddings, atol=1e-6)


def test_threaded_decoding_gives_what_inline_decoding_gives(tiny_model, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    items = [*IMAGES[:4], broken, *IMAGES[4:], tmp_path / "missing.png"] * 2
    runs = [
        encode_stream(
            len(items),
            lambda i: tiny_model.processing.pixels(items[i], str(items[i])),
            lambda i: str(items[i]),
            lambda x: tiny_model.encode_pixels(x, 3),
            3,
            "test",
            show=False,
            workers=w,
        )
        for w in (0, 1, 3)
    ]
    emb0, kept0, errors0 = runs[0]
    assert len(errors0) == 4 and kept0 == [i for i in range(len(items)) if i % 9 not in (4, 8)]
    for emb, kept, errors in runs[1:]:
        np.testing.assert_array_equal(emb, emb0)
        assert kept == kept0 and errors == errors0


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_bank_from_a_clip_retrieval_directory_equals_the_bank_of_its_vectors(file_bank, tmp_path, capsys, dtype):
    d = tmp_path / "index"
    (d / "img_emb").mkdir(parents=True)
    (d / "metadata").mkdir()
    emb = file_bank.embeddings.copy()
    emb[5] = np.nan  # a bad row: named and skipped
    for part, rows in enumerate([slice(0, 4), slice(4, None)]):
        np.save(d / "img_emb" / f"img_emb_{part}.npy", emb[rows].astype(dtype))
        paths = [str(p) for p in IMAGES[rows]]
        pq.write_table(
            pa.table({"image_path": paths, "caption": ["c"] * len(paths)}), d / "metadata" / f"metadata_{part}.parquet"
        )
    keep = [i for i in range(len(IMAGES)) if i != 5]
    tol = 1e-6 if dtype == np.float32 else 2e-3
    for shard_size, shards in [("100", None), ("3", 3)]:
        out = tmp_path / f"bank-{shard_size}"
        assert main([*BUILD, "--precomputed", str(d), "--out", str(out), "--shard-size", shard_size]) == 1
        assert f"skipped {d / 'img_emb' / 'img_emb_1.npy'}: row 1: holds NaN or infinity" in capsys.readouterr().err
        bank = Bank.load(out)
        assert bank.fingerprint == file_bank.fingerprint and bank.items == [str(IMAGES[i]) for i in keep]
        assert bank.ids == [str(i) for i in keep]
        assert (getattr(bank.index, "num_shards", None)) == shards
        np.testing.assert_allclose(bank.embeddings, file_bank.embeddings[keep], atol=tol)
        np.testing.assert_allclose(np.linalg.norm(bank.embeddings, axis=1), 1, atol=1e-6)


def test_precomputed_embeddings_of_another_width_are_refused(tiny_model, tmp_path, capsys):
    x = np.eye(3, tiny_model.embed_dim + 1, dtype=np.float32)
    np.save(tmp_path / "e.npy", x)
    assert main([*BUILD, "--precomputed", str(tmp_path / "e.npy"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert f"embeddings of dimension {tiny_model.embed_dim + 1}" in err
    assert f"makes embeddings of dimension {tiny_model.embed_dim}" in err and not (tmp_path / "b").exists()


def test_embed_reads_tar_shards(file_bank, tmp_path):
    _tar(tmp_path / "a.tar", [_sample(i, p) for i, p in enumerate(IMAGES)])
    out = tmp_path / "e.npy"
    assert main(["embed", "--model", str(TINY), "--images", str(tmp_path / "a.tar"), "--out", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), file_bank.embeddings, atol=1e-6)
    assert json.loads(out.with_suffix(".json").read_text())["items"][1] == f"{tmp_path / 'a.tar'}: sample 000000001"
