"""Shards and records of JSON lines, webdataset tars, parquet files and image folders; precomputed
embeddings; decoding in a pool of threads."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from jaxplain.data.decode import Decoded, decode_parallel
from jaxplain.data.images import read_processing
from jaxplain.data.precomputed import iter_embedding_chunks, open_embeddings
from jaxplain.data.sources import (
    Columns,
    Record,
    SourceConfig,
    expand_inputs,
    list_shards,
    read_records,
    read_shard,
    shards_for_process,
)
from jaxplain.errors import InputError
from tests.conftest import TINY

PROCESSING = read_processing(TINY, 32)


def png(seed: int, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def summary(records) -> list[tuple]:
    return [(r.shard, r.row, r.where, r.key, r.text, r.fields, r.error) for r in records]


# --------------------------------------------------------------------------------------------------- JSON lines


PAIRS = (
    b'\xef\xbb\xbf{"image": "a.png", "want": "runner-up"}\n'
    b"\n"
    b'{"image": "b.png", "text": "line\xe2\x80\xa8separator, next\xc2\x85line", "want": "similarity<=0.2"}\r\n'
    b"{not json \x0c form feed\n"
    b"[1, 2]\n"
    b'{"id": "\xff"}\n'
    b'{"image": "c.png", "want": "any-other"}'  # no final newline
)
EXPECTED_PAIRS = [
    ("line 1", {"image": "a.png", "want": "runner-up"}, None),
    ("line 2", {}, None),
    ("line 3", {"image": "b.png", "text": "line\u2028separator, next\x85line", "want": "similarity<=0.2"}, None),
    ("line 4", {}, "not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
    ("line 5", {}, "expected a JSON object, got list"),
    ("line 6", {}, "not valid UTF-8 (byte 0xff at byte 9)"),
    ("line 7", {"image": "c.png", "want": "any-other"}, None),
]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100])
def test_jsonl_chunks_read_what_the_whole_file_holds(tmp_path, chunk):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(PAIRS)
    shards = list_shards(path, config=SourceConfig(chunk=chunk))
    assert len(shards) == -(-7 // chunk)
    assert [(s.start, s.stop) for s in shards] == [(a, min(7, a + chunk)) for a in range(0, 7, chunk)]
    records = list(read_records(shards))
    got = [(r.key, r.fields, r.error) for r in records]
    assert got == EXPECTED_PAIRS
    assert [r.where for r in records] == [f"{path}: line {n}" for n in range(1, 8)]
    assert [r.blank for r in records] == [False, True, False, False, False, False, False]
    assert [(r.shard, r.row) for r in records] == [(n // chunk, n % chunk) for n in range(7)]
    # Each shard read on its own (as another process would) gives the same records.
    assert [r for s in shards for r in read_shard(s)] == records


def test_jsonl_ending_on_a_chunk_boundary(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(6)))
    shards = list_shards(path, config=SourceConfig(chunk=3))
    assert [(s.start, s.stop, s.size) for s in shards] == [(0, 3, 3), (3, 6, 3)]
    assert [r.fields["n"] for r in read_records(shards)] == list(range(6))
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert list_shards(tmp_path / "empty.jsonl") == []


# -------------------------------------------------------------------------------------------------- webdataset


def write_tar(path, samples):
    with wds.TarWriter(str(path), encoder=False) as w:
        for s in samples:
            w.write(s)


def sample(i: int, **extra) -> dict:
    s = {"__key__": f"{i:09d}", "png": png(i), "txt": f"caption {i}".encode(), "json": json.dumps({"id": i}).encode()}
    s.update(extra)
    return {k: v for k, v in s.items() if v is not None}


def test_tar_shards_by_brace_pattern(tmp_path):
    for k in range(3):
        write_tar(tmp_path / f"{k:06d}.tar", [sample(10 * k + i) for i in range(4)])
    shards = list_shards(str(tmp_path / "{000000..000002}.tar"))
    assert [s.kind for s in shards] == ["tar"] * 3
    records = list(read_records(shards))
    assert [(r.shard, r.row, r.key, r.text, r.fields) for r in records] == [
        (k, i, f"{10 * k + i:09d}", f"caption {10 * k + i}", {"id": 10 * k + i}) for k in range(3) for i in range(4)
    ]
    assert records[5].where == f"{tmp_path}/000001.tar: sample 000000011"
    assert all(r.image == png(int(r.key)) for r in records)
    np.testing.assert_array_equal(
        PROCESSING.pixels(records[5].image, records[5].where), PROCESSING.pixels(png(11), "x")
    )


def test_tar_bad_samples_are_error_records_and_the_others_come_through(tmp_path):
    path = tmp_path / "000003.tar"
    write_tar(
        path,
        [
            sample(0),
            sample(1, png=None, jpg=b"\xff\xd8 not really a jpeg"),  # decodes badly: an error only once decoded
            sample(2, png=None),  # no image member
            sample(3, json=b'{"id": 3,'),  # bad json
            sample(4, json=b"[3]"),  # json, not an object
            sample(5, txt=b"caf\xe9"),  # txt not UTF-8
            sample(6),
        ],
    )
    records = list(read_records(list_shards(path)))
    assert [(r.key, r.error) for r in records] == [
        ("000000000", None),
        ("000000001", None),
        ("000000002", "no image member (it has json, txt)"),
        (
            "000000003",
            "its json member is not valid JSON (Expecting property name enclosed in double quotes: "
            "line 1 column 10 (char 9))",
        ),
        ("000000004", "its json member is not an object (list)"),
        ("000000005", "its txt member is not valid UTF-8 (unexpected end of data at byte 4)"),
        ("000000006", None),
    ]
    assert records[3].message == f"{path}: sample 000000003: " + records[3].error
    decoded = list(decode_parallel(records, lambda r: PROCESSING.pixels(r.image, r.where), workers=2))
    assert [d.error is None for d in decoded] == [True, False, False, False, False, False, True]
    assert decoded[1].error.startswith("cannot read it as an image")
    np.testing.assert_array_equal(decoded[6].value, PROCESSING.pixels(png(6), "x"))


def test_text_only_tar_needs_no_image(tmp_path):
    path = tmp_path / "texts.tar"
    write_tar(path, [sample(i, png=None) for i in range(3)])
    records = list(read_records(list_shards(path, config=SourceConfig(need_image=False))))
    assert [(r.text, r.image, r.error) for r in records] == [(f"caption {i}", None, None) for i in range(3)]


def member_offsets(path) -> list[tuple[str, int, int]]:
    with tarfile.open(path) as tf:
        return [(m.name, m.offset, m.offset_data) for m in tf.getmembers()]


@pytest.mark.parametrize(
    "damage, good, error",
    [
        ("truncated in a member", 2, "the tar is corrupt or truncated (unexpected end of data)"),
        ("truncated at a header", 2, "the tar is truncated (it ends at byte {at} without its end-of-archive blocks)"),
        ("corrupt header", 2, "the tar has a corrupt header at byte {at}; nothing after it can be read"),
        (
            "zeroed header",
            2,
            "the tar has an end-of-archive block at byte {at} with data after it; that data cannot be read",
        ),
    ],
)
def test_damaged_tar_names_the_sample_and_keeps_the_samples_before(tmp_path, damage, good, error):
    whole = tmp_path / "whole.tar"
    write_tar(whole, [sample(i) for i in range(6)])
    data = bytearray(whole.read_bytes())
    offsets = member_offsets(whole)
    at = offsets[3 * good + 3][1]  # the header of the next sample's first member: sample `good` is still open
    if damage == "truncated in a member":
        data = data[: offsets[3 * good + 1][2] + 10]  # into sample good's second member
    elif damage == "truncated at a header":
        data = data[:at]
    elif damage == "corrupt header":
        data[at : at + 100] = b"x" * 100
    else:
        data[at : at + 512] = bytes(512)
    path = tmp_path / "000007.tar"
    path.write_bytes(bytes(data))
    records = list(read_records(list_shards(path)))
    # The samples before the damage come through; the one being read when the tar broke is an error.
    assert [(r.key, r.error) for r in records[:good]] == [(f"{i:09d}", None) for i in range(good)]
    assert len(records) == good + 1
    last = records[-1]
    assert last.key == f"{good:09d}"
    assert last.where == f"{path}: sample {good:09d}"
    assert last.error == error.format(at=at) + "; this sample may be incomplete"


def test_unreadable_tar_is_one_error_record_and_the_next_shard_goes_on(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"this is not a tar file " * 40)
    (tmp_path / "b.tar").write_bytes(b"")
    write_tar(tmp_path / "c.tar", [sample(0)])
    records = list(read_records(list_shards([tmp_path / "a.tar", tmp_path / "b.tar", tmp_path / "c.tar"])))
    assert summary(records) == [
        (0, 0, f"{tmp_path}/a.tar", None, None, {}, "the tar is corrupt or truncated (invalid header)"),
        (1, 0, f"{tmp_path}/b.tar", None, None, {}, "the tar is corrupt or truncated (empty file)"),
        (2, 0, f"{tmp_path}/c.tar: sample 000000000", "000000000", "caption 0", {"id": 0}, None),
    ]


# ----------------------------------------------------------------------------------------------------- parquet


def test_parquet_bytes_column_with_a_null_row(tmp_path):
    path = tmp_path / "x.parquet"
    table = pa.table(
        {
            "key": ["k0", "k1", "k2", "k3", "k4"],
            "jpg": [png(0), png(1), None, png(3), png(4)],
            "caption": ["a", "b", "c", None, "e"],
            "url": [f"http://h/{i}" for i in range(5)],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    for config in (SourceConfig(batch_rows=2), SourceConfig(row_groups=1, batch_rows=1)):
        shards = list_shards(path, config=config)
        records = list(read_records(shards))
        assert [(r.where, r.key, r.text, r.fields, r.error) for r in records] == [
            (
                f"{path}: row {i}",
                f"k{i}",
                [*"abc", None, "e"][i],
                {"key": f"k{i}", "url": f"http://h/{i}"},
                "no image (column 'jpg' is null)" if i == 2 else None,
            )
            for i in range(5)
        ]
        assert [r.image for r in records] == [png(0), png(1), None, png(3), png(4)]
    assert [(s.name, s.first_row, s.size) for s in shards] == [
        (f"{path}: row group {g}", 2 * g, [2, 2, 1][g]) for g in range(3)
    ]
    assert [(r.shard, r.row) for r in records] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]


def test_parquet_hugging_face_images_and_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "p.png").write_bytes(png(7))
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": png(5), "path": None}, {"bytes": None, "path": "imgs/p.png"}, None], struct)
    pq.write_table(pa.table({"image": images, "text": ["x", "y", "z"]}), tmp_path / "hf.parquet")
    records = list(read_records(list_shards(tmp_path / "hf.parquet")))
    assert [(r.image, r.text, r.key, r.error) for r in records] == [
        (png(5), "x", "0", None),
        (tmp_path / "imgs" / "p.png", "y", "1", None),
        (None, "z", "2", "no image (column 'image' is null)"),
    ]
    np.testing.assert_array_equal(PROCESSING.pixels(records[1].image), PROCESSING.pixels(png(7)))

    pq.write_table(pa.table({"image_path": ["imgs/p.png", ""], "note": [1, 2]}), tmp_path / "paths.parquet")
    cols = Columns(text=None, key=None, fields=("note",))
    records = list(read_records(list_shards(tmp_path / "paths.parquet", config=SourceConfig(columns=cols))))
    assert [(r.image, r.fields, r.error) for r in records] == [
        (tmp_path / "imgs" / "p.png", {"note": 1}, None),
        (None, {"note": 2}, "no image (column 'image_path' holds an empty path)"),
    ]


def test_parquet_whole_file_problems_are_one_error_record(tmp_path):
    pq.write_table(pa.table({"image": [1, 2]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"caption": ["a"]}), tmp_path / "b.parquet")
    (tmp_path / "c.parquet").write_bytes(b"PAR1 but not really")
    pq.write_table(pa.table({"caption": ["only text"]}), tmp_path / "d.parquet")
    paths = [tmp_path / f"{c}.parquet" for c in "abcd"]
    records = list(read_records(list_shards(paths)))
    assert [(r.where, r.key) for r in records[:3]] == [(str(p), None) for p in paths[:3]]
    assert records[0].error == (
        "column 'image' holds int64; an image column holds bytes, a path, or a struct with 'bytes' (and 'path')"
    )
    assert records[1].error.startswith("no image column (looked for image, jpg,")
    assert records[2].error.startswith("cannot read the parquet file (")
    assert records[3].where == str(paths[3]) and records[3].error.startswith("no image column")
    text_only = SourceConfig(columns=Columns(image=None))
    assert [(r.text, r.image, r.error) for r in read_records(list_shards(paths[3], config=text_only))] == [
        ("only text", None, None)
    ]


# ----------------------------------------------------------------------------------------------- image folders


def test_image_folders_in_chunks(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(png(i))
    (tmp_path / "notes.txt").write_text("not an image")
    shards = list_shards(tmp_path, config=SourceConfig(chunk=2))
    assert [(s.name, s.size) for s in shards] == [("images 0–1", 2), ("images 2–3", 2), ("images 4–4", 1)]
    records = list(read_records(shards))
    assert [(r.shard, r.row, r.image) for r in records] == [(i // 2, i % 2, tmp_path / f"{i}.png") for i in range(5)]
    assert records[3].where == records[3].key == str(tmp_path / "3.png")


def test_listing_errors(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"")
    (tmp_path / "b.parquet").write_bytes(b"")
    with pytest.raises(InputError, match=r"the inputs mix kinds"):
        list_shards([tmp_path / "a.tar", tmp_path / "b.parquet"])
    (tmp_path / "000.tar").write_bytes(b"")
    with pytest.raises(InputError, match=r"001\.tar, .*002\.tar: no such file"):
        list_shards(str(tmp_path / "{000..002}.tar"))
    with pytest.raises(InputError, match=r"\*\.jsonl: no file matches"):
        list_shards(str(tmp_path / "*.jsonl"))
    with pytest.raises(InputError, match="cannot tell what kind"):
        list_shards(tmp_path / "a.tar.bz2")
    assert expand_inputs(str(tmp_path / "{x,y}/{1..2}.tar")) == [
        str(tmp_path / p) for p in ("x/1.tar", "x/2.tar", "y/1.tar", "y/2.tar")
    ]
    assert [s.kind for s in list_shards(tmp_path / "a.tar", kind="tar")] == ["tar"]


# ---------------------------------------------------------------------------------------------------- processes


@pytest.mark.parametrize("n", [0, 1, 3, 7, 10])
@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_shards_for_process_cover_every_shard_once_in_order(tmp_path, n, count):
    path = tmp_path / "p.jsonl"
    path.write_text("{}\n" * n)
    shards = list_shards(path, config=SourceConfig(chunk=1))
    parts = [shards_for_process(shards, i, count) for i in range(count)]
    assert [s for part in parts for s in part] == shards  # joined in process order: the single-process order
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(InputError):
        shards_for_process(shards, count, count)


# -------------------------------------------------------------------------------------------------- precomputed


def unit_rows(rng, n, e=6):
    x = rng.normal(size=(n, e))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clip_retrieval_dir(root, sizes, dtype=np.float16, seed=0):
    rng = np.random.default_rng(seed)
    (root / "img_emb").mkdir(parents=True)
    (root / "text_emb").mkdir()
    (root / "metadata").mkdir()
    everything, start = [], 0
    for i, n in enumerate(sizes):
        x = unit_rows(rng, n).astype(dtype)
        np.save(root / "img_emb" / f"img_emb_{i}.npy", x)
        np.save(root / "text_emb" / f"text_emb_{i}.npy", unit_rows(rng, n).astype(dtype))
        meta = pa.table(
            {"image_path": [f"{start + j}.jpg" for j in range(n)], "caption": [f"c{start + j}" for j in range(n)]}
        )
        pq.write_table(meta, root / "metadata" / f"metadata_{i}.parquet", row_group_size=3)
        everything.append(x)
        start += n
    return np.concatenate(everything)


@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_clip_retrieval_layout_in_chunks(tmp_path, chunk):
    x = clip_retrieval_dir(tmp_path, [7, 5])
    emb = open_embeddings(tmp_path, "image")
    assert (emb.size, emb.dim, [p.rows for p in emb.parts]) == (12, 6, [7, 5])
    chunks = list(emb.chunks(chunk))
    assert [c.offset for c in chunks] == [o for start, n in ((0, 7), (7, 5)) for o in range(start, start + n, chunk)]
    got = np.concatenate([c.embeddings for c in chunks])
    expected = x.astype(np.float32) / np.linalg.norm(x.astype(np.float32), axis=1, keepdims=True)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    assert [p for c in chunks for p in c.metadata["image_path"]] == [f"{i}.jpg" for i in range(12)]
    assert np.concatenate([c.rows for c in chunks]).tolist() == list(range(12))
    texts = list(iter_embedding_chunks(tmp_path, "text", chunk=chunk, columns=["caption"]))
    assert sum(len(c.embeddings) for c in texts) == 12 and set(texts[0].metadata) == {"caption"}


def test_clip_retrieval_layout_errors(tmp_path):
    clip_retrieval_dir(tmp_path / "a", [3, 2])
    (tmp_path / "a" / "metadata" / "metadata_1.parquet").unlink()
    with pytest.raises(InputError, match=r"2 embedding files in img_emb/ but 1 metadata files"):
        open_embeddings(tmp_path / "a")
    clip_retrieval_dir(tmp_path / "b", [3, 2])
    pq.write_table(pa.table({"caption": ["x"]}), tmp_path / "b" / "metadata" / "metadata_1.parquet")
    with pytest.raises(InputError) as e:
        open_embeddings(tmp_path / "b")
    assert str(e.value) == (
        f"{tmp_path}/b/img_emb/img_emb_1.npy has 2 rows but its metadata {tmp_path}/b/metadata/metadata_1.parquet "
        "has 1; they must align row by row"
    )
    clip_retrieval_dir(tmp_path / "c", [3, 2])
    np.save(tmp_path / "c" / "img_emb" / "img_emb_1.npy", np.ones((2, 5), np.float32) / np.sqrt(5))
    with pytest.raises(InputError, match=r"img_emb_1.npy: embeddings of width 5, but .*img_emb_0.npy has width 6"):
        open_embeddings(tmp_path / "c")
    clip_retrieval_dir(tmp_path / "d", [3, 2])
    (tmp_path / "d" / "img_emb" / "img_emb_0.npy").rename(tmp_path / "d" / "img_emb" / "img_emb_2.npy")
    with pytest.raises(InputError, match=r"part 0 is missing"):
        open_embeddings(tmp_path / "d")


def test_npy_with_json_metadata_and_bad_rows(tmp_path):
    x = unit_rows(np.random.default_rng(1), 5).astype(np.float32)
    x[1] *= 1.5
    x[3, 2] = np.nan
    np.save(tmp_path / "e.npy", x)
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"caption": f"t{i}"}) + "\n" for i in range(5)))
    with pytest.raises(InputError) as e:
        list(iter_embedding_chunks(tmp_path / "e.npy", metadata=tmp_path / "m.jsonl", chunk=2))
    assert str(e.value) == f"{tmp_path}/e.npy: row 1 has norm 1.5, not 1 (embeddings must be unit-norm)"
    chunks = list(iter_embedding_chunks(tmp_path / "e.npy", metadata=tmp_path / "m.jsonl", chunk=2, bad_rows="skip"))
    assert [c.rows.tolist() for c in chunks] == [[0], [2], [4]]
    assert [c.metadata["caption"] for c in chunks] == [["t0"], ["t2"], ["t4"]]
    assert [c.errors for c in chunks] == [
        [f"{tmp_path}/e.npy: row 1 has norm 1.5, not 1 (embeddings must be unit-norm)"],
        [f"{tmp_path}/e.npy: row 3 holds NaN or infinity (embeddings must be unit-norm)"],
        [],
    ]
    np.testing.assert_allclose(np.concatenate([c.embeddings for c in chunks]), x[[0, 2, 4]], rtol=1e-6)
    (tmp_path / "m.json").write_text(json.dumps([{"caption": "only one"}]))
    with pytest.raises(InputError, match=r"e.npy has 5 rows but its metadata .*m.json has 1"):
        open_embeddings(tmp_path / "e.npy", metadata=tmp_path / "m.json")
    np.save(tmp_path / "ints.npy", np.zeros((2, 3), np.int32))
    with pytest.raises(InputError, match=r"ints.npy: expected embeddings \[N, E\] of float16, float32 or float64"):
        open_embeddings(tmp_path / "ints.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"objects.npy: not a readable .npy file"):
        open_embeddings(tmp_path / "objects.npy")


# ------------------------------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_decode_parallel_keeps_order_and_errors(workers):
    items = [Record(0, i, f"item {i}", str(i), fields={"n": i}) for i in range(40)]
    items[7] = Record(0, 7, "item 7", "7", error="bad before decoding")

    def prepare(r):
        time.sleep(0.002 * (r.row % 3))  # finish out of order
        if r.row % 10 == 3:
            raise InputError(f"{r.where}: cannot read it as an image (broken)")
        if r.row == 25:
            raise ZeroDivisionError("division by zero")
        return r.row * 10

    out = list(decode_parallel(items, prepare, workers=workers, prefetch=5))
    assert [d.item for d in out] == items
    errors = {
        3: "cannot read it as an image (broken)",
        7: "bad before decoding",
        25: "ZeroDivisionError: division by zero",
    }
    errors |= {13: errors[3], 23: errors[3], 33: errors[3]}
    assert out == [
        Decoded(items[i], None, errors[i]) if i in errors else Decoded(items[i], 10 * i, None) for i in range(40)
    ]


def test_decode_parallel_bounds_what_runs_ahead():
    pulled = []
    running, most = [0], [0]
    lock = threading.Lock()

    def items():
        for i in range(50):
            pulled.append(i)
            yield i

    def prepare(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.001)
        with lock:
            running[0] -= 1
        return i

    stream = decode_parallel(items(), prepare, workers=2, prefetch=6)
    first = [next(stream).value for _ in range(3)]
    assert first == [0, 1, 2]
    assert len(pulled) <= 3 + 6  # the consumer took 3, at most `prefetch` more were submitted
    assert [d.value for d in stream] == list(range(3, 50))
    assert most[0] <= 2


def test_decode_parallel_pixels_equal_inline(tmp_path):
    write_tar(tmp_path / "s.tar", [sample(i) for i in range(12)])
    records = list(read_records(list_shards(tmp_path / "s.tar")))
    out = list(decode_parallel(records, lambda r: PROCESSING.pixels(r.image, r.where), workers=3, prefetch=4))
    for r, d in zip(records, out):
        assert d.item is r and d.error is None
        np.testing.assert_array_equal(d.value, PROCESSING.pixels(png(int(r.key)), "x"))


def test_gzipped_tar_and_a_kind_given_by_hand(tmp_path):
    import gzip

    write_tar(tmp_path / "s.tar", [sample(i) for i in range(3)])
    (tmp_path / "s.tar.gz").write_bytes(gzip.compress((tmp_path / "s.tar").read_bytes()))
    assert [r.text for r in read_records(list_shards(tmp_path / "s.tar.gz"))] == [f"caption {i}" for i in range(3)]
    (tmp_path / "pairs.txt").write_text('{"a": 1}\n{"a": 2}\n')
    assert [r.fields for r in read_records(list_shards(tmp_path / "pairs.txt", kind="jsonl"))] == [{"a": 1}, {"a": 2}]
