"""Banks that cannot be mixed up: every file of a bank is verified against its checksum in bank.json, rows that
are not finite are refused when a bank is made and when one is loaded, and a save that fails leaves nothing."""

import errno
import json
import os
import shutil

import numpy as np
import pytest

from jaxplain import distributed
from jaxplain.counterfactual import bank as bank_module
from jaxplain.counterfactual import index as index_module
from jaxplain.counterfactual.bank import (
    Bank,
    BankError,
    array_digest,
    build_bank,
    remove_stale_temporaries,
)
from jaxplain.counterfactual.hosts import HostShardedBank
from jaxplain.counterfactual.index import ExactIndex, IndexFileError, ScannIndex, build_index, load_index
from jaxplain.counterfactual.sharded_bank import build_from_embeddings, sharded_digest
from jaxplain.counterfactual.shards import ShardedIndex, build_sharded_index
from jaxplain.data.precomputed import open_embeddings
from jaxplain.errors import InputError, OutputError
from jaxplain.jobs import file_digest
from tests.conftest import FIXTURES

IMAGES = sorted((FIXTURES / "images").iterdir())
CHANGED = "does not match its checksum in bank.json (the file was changed after the bank was built); rebuild the bank"


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def text_bank(tiny_model, n: int = 40, backend: str = "exact", labels: bool = True) -> Bank:
    emb = unit_rows(n, tiny_model.embed_dim)
    return Bank(
        kind="text",
        items=[f"caption {i}" for i in range(n)],
        ids=[f"text:{i + 1}" for i in range(n)],
        embeddings=emb,
        model_name=tiny_model.name,
        fingerprint=tiny_model.fingerprint,
        index=build_index(emb, backend),
        labels=np.arange(n) % 4 if labels else None,
    )


@pytest.fixture(scope="module")
def image_bank(tiny_model):
    bank, errors = build_bank(tiny_model, images=IMAGES, batch_size=3, progress=False)
    assert errors == []
    return bank


def rewrite_checksum(d, name, array=None):
    """What a tool that rewrites a bank's file and its checksum does (a bank that passes its checksums)."""
    meta = json.loads((d / "bank.json").read_text())
    meta["files"][name] = array_digest(array) if array is not None else file_digest(d / name)
    (d / "bank.json").write_text(json.dumps(meta))


# ------------------------------------------------------------------------------------------ checksums


def test_bank_json_records_a_checksum_of_every_file(tiny_model, tmp_path):
    bank = text_bank(tiny_model, backend="scann")
    d = bank.save(tmp_path / "b")
    meta = json.loads((d / "bank.json").read_text())
    assert meta["version"] == 3
    on_disk = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file() and p.name != "bank.json")
    assert sorted(meta["files"]) == on_disk and "index/dataset.npy" in on_disk
    assert meta["files"]["embeddings.npy"] == array_digest(bank.embeddings) == bank.digest
    assert meta["files"]["labels.npy"] == array_digest(bank.labels.astype(np.int64))
    assert meta["files"]["items.json"] == file_digest(d / "items.json")
    assert meta["files"]["index/dataset.npy"] == file_digest(d / "index" / "dataset.npy")


@pytest.mark.parametrize("change", ["permute two rows", "replace one row"])
def test_changed_embeddings_are_refused(image_bank, tiny_model, tmp_path, change):
    d = image_bank.save(tmp_path / "img")
    emb = np.load(d / "embeddings.npy")
    if change == "permute two rows":
        emb[[2, 5]] = emb[[5, 2]]
    else:
        emb[3] = image_bank.embeddings[0]  # a real, finite, unit-norm row of another item
    np.save(d / "embeddings.npy", emb)
    with pytest.raises(BankError) as e:
        Bank.load(d, tiny_model)
    assert str(e.value) == f"{d}: embeddings.npy {CHANGED}"


def test_changed_items_labels_and_index_files_are_refused(tiny_model, tmp_path):
    bank = text_bank(tiny_model, backend="scann")
    cases = {
        "items.json": lambda d: (d / "items.json").write_text(
            json.dumps({"items": bank.items[::-1], "ids": bank.ids[::-1]})
        ),
        "labels.npy": lambda d: np.save(d / "labels.npy", np.roll(bank.labels.astype(np.int64), 1)),
        "index/dataset.npy": lambda d: np.save(d / "index" / "dataset.npy", bank.embeddings[::-1].copy()),
    }
    for name, change in cases.items():
        d = bank.save(tmp_path / name.replace("/", "-"))
        change(d)
        with pytest.raises(BankError) as e:
            Bank.load(d, tiny_model)
        assert str(e.value) == f"{d}: {name} {CHANGED}"


def test_a_missing_file_and_a_missing_checksum_are_refused(tiny_model, tmp_path):
    d = text_bank(tiny_model).save(tmp_path / "b")
    (d / "labels.npy").unlink()
    with pytest.raises(BankError) as e:
        Bank.load(d)
    assert str(e.value) == f"{d}: labels.npy is missing (bank.json lists it); rebuild the bank"
    d = text_bank(tiny_model).save(tmp_path / "c")
    meta = json.loads((d / "bank.json").read_text())
    del meta["files"]["embeddings.npy"]
    (d / "bank.json").write_text(json.dumps(meta))
    with pytest.raises(BankError) as e:
        Bank.load(d)
    assert str(e.value) == f"{d}: bank.json lists no checksum of embeddings.npy; rebuild the bank"
    meta["files"]["../elsewhere"] = "00"
    meta["files"]["embeddings.npy"] = "00"
    (d / "bank.json").write_text(json.dumps(meta))
    with pytest.raises(BankError) as e:
        Bank.load(d)
    assert str(e.value) == f"{d}: bank.json lists '../elsewhere', which is not a file inside the bank; rebuild the bank"


@pytest.mark.parametrize("version", [1, 2])
def test_a_bank_saved_without_checksums_is_refused(tiny_model, tmp_path, version):
    d = text_bank(tiny_model).save(tmp_path / "old")
    meta = json.loads((d / "bank.json").read_text())
    meta["version"] = version
    del meta["files"]
    if version == 2:  # the manifest of a sharded bank of that version
        meta.update(index="sharded", shards=[{"name": "shard-00000-of-00001", "offset": 0, "size": meta["size"]}])
    (d / "bank.json").write_text(json.dumps(meta))
    with pytest.raises(BankError) as e:
        Bank.load(d, tiny_model)
    assert str(e.value) == (
        f"{d}: saved by an older jaxplain (bank format version {version}), without checksums of its files, so it "
        "cannot be verified; rebuild the bank with `jaxplain bank build`"
    )


def test_a_loaded_bank_hashes_its_embeddings_once_and_its_identity_reuses_the_checksum(
    image_bank, tiny_model, tmp_path, monkeypatch
):
    d = image_bank.save(tmp_path / "img")
    calls = []
    real = bank_module.array_digest
    monkeypatch.setattr(bank_module, "array_digest", lambda a: calls.append(a.shape) or real(a))
    bank = Bank.load(d, tiny_model)
    identity = bank.identity()
    assert calls == [image_bank.embeddings.shape]  # verified once, and the identity takes that checksum
    assert identity["embeddings"] == image_bank.digest == array_digest(image_bank.embeddings)
    assert identity == image_bank.identity()


# ------------------------------------------------------------------------------------------ not finite


@pytest.mark.parametrize("backend", ["exact", "scann"])
def test_a_bank_with_non_finite_rows_is_refused_at_load_with_its_path_and_item(tiny_model, tmp_path, backend):
    bank = text_bank(tiny_model, backend=backend)
    d = bank.save(tmp_path / "b")
    emb = bank.embeddings.copy()
    emb[17, 3] = np.nan
    np.save(d / "embeddings.npy", emb)
    rewrite_checksum(d, "embeddings.npy", emb)  # the checksums pass: only the rows are wrong
    with pytest.raises(BankError) as e:
        Bank.load(d, tiny_model)
    assert str(e.value) == f"{d}: embeddings.npy row 17 (item 'caption 17') is not finite; rebuild the bank"
    emb[[3, 9, 20, 30]] = np.inf
    np.save(d / "embeddings.npy", emb)
    rewrite_checksum(d, "embeddings.npy", emb)
    with pytest.raises(BankError) as e:
        Bank.load(d, tiny_model)
    assert str(e.value) == (
        f"{d}: embeddings.npy rows 3 (item 'caption 3'), 9 (item 'caption 9'), 17 (item 'caption 17') and 2 more "
        "are not finite; rebuild the bank"
    )


def test_every_index_kind_refuses_non_finite_rows_at_build(tiny_model):
    emb = unit_rows(50, tiny_model.embed_dim)
    emb[7, 0] = np.nan
    emb[40, 5] = -np.inf
    for build in (
        lambda: ExactIndex(emb),
        lambda: ScannIndex.build(emb),
        lambda: build_index(emb, "auto"),
        lambda: build_sharded_index(emb, 3, "exact"),
        lambda: build_sharded_index(emb, 2, "scann"),
    ):
        with pytest.raises(InputError) as e:
            build()
        assert str(e.value) == "embedding rows [7, 40] hold NaN or infinity"
    good = text_bank(tiny_model, n=50)
    with pytest.raises(InputError) as e:  # a bank whose rows are not finite, whatever its index
        Bank("text", good.items, good.ids, emb, good.model_name, good.fingerprint, good.index)
    assert str(e.value) == (
        "rows 7 (item 'caption 7'), 40 (item 'caption 40') of the embeddings are not finite (NaN or infinity); "
        "a bank holds finite embeddings only"
    )


def test_every_index_kind_refuses_non_finite_rows_at_load(tiny_model, tmp_path):
    emb = unit_rows(50, tiny_model.embed_dim)
    ExactIndex(emb).save(tmp_path / "exact")
    ScannIndex.build(emb).save(tmp_path / "scann")
    build_sharded_index(emb, 2, "exact").save(tmp_path / "sharded")
    bad = emb.copy()
    bad[12] = np.nan
    np.save(tmp_path / "exact" / "embeddings.npy", bad)
    np.save(tmp_path / "scann" / "dataset.npy", bad)
    shard = emb[25:].copy()
    shard[3, 1] = np.inf
    np.save(tmp_path / "sharded" / "shard-00001" / "embeddings.npy", shard)
    expected = {
        "exact": f"{tmp_path / 'exact'}: embeddings.npy row 12 is not finite (NaN or infinity); rebuild the index",
        "scann": f"{tmp_path / 'scann'}: dataset.npy row 12 is not finite (NaN or infinity); rebuild the index",
        "sharded": f"{tmp_path / 'sharded' / 'shard-00001'}: embeddings.npy row 3 is not finite (NaN or infinity); "
        "rebuild the index",
    }
    for kind, message in expected.items():
        with pytest.raises(IndexFileError) as e:
            load_index(tmp_path / kind)
        assert str(e.value) == message


def test_precomputed_non_finite_rows_are_skipped_by_name_and_the_rest_kept(tiny_model, tmp_path):
    emb = unit_rows(12, tiny_model.embed_dim)
    emb[4] = np.nan
    emb[9, 2] = np.inf
    np.save(tmp_path / "e.npy", emb)
    keep = [i for i in range(12) if i not in (4, 9)]
    for sharded in (False, True):
        out = tmp_path / f"bank-{sharded}"
        precomputed = open_embeddings(tmp_path / "e.npy", "text")
        path, counts, bad = build_from_embeddings(
            tiny_model, out, precomputed, shard_size=5, sharded=sharded, progress=False
        )
        assert path == out / "bank.json" and counts == {"items": 10, "bad": 2}
        assert bad == [
            {"item": f"{tmp_path / 'e.npy'}: row 4", "error": "holds NaN or infinity (embeddings must be unit-norm)"},
            {"item": f"{tmp_path / 'e.npy'}: row 9", "error": "holds NaN or infinity (embeddings must be unit-norm)"},
        ]
        loaded = Bank.load(out, tiny_model)
        assert loaded.ids == [str(i) for i in keep]
        np.testing.assert_allclose(loaded.embeddings, emb[keep], atol=1e-6)


# ------------------------------------------------------------------------------------------ sharded banks


@pytest.fixture()
def sharded(tiny_model, tmp_path):
    emb = unit_rows(12, tiny_model.embed_dim, seed=1)
    np.save(tmp_path / "e.npy", emb)
    out = tmp_path / "sharded"
    build_from_embeddings(
        tiny_model, out, open_embeddings(tmp_path / "e.npy", "text"), shard_size=4, sharded=True, progress=False
    )
    return out, emb


def test_a_sharded_bank_verifies_every_shard(tiny_model, sharded):
    out, _ = sharded
    bank = Bank.load(out, tiny_model)
    assert isinstance(bank.index, ShardedIndex) and bank.index.num_shards == 3
    manifest = json.loads((out / "bank.json").read_text())
    assert manifest["version"] == 3
    for entry in manifest["shards"]:
        assert entry["bank.json"] == file_digest(out / entry["name"] / "bank.json")
    metas = [json.loads((out / e["name"] / "bank.json").read_text()) for e in manifest["shards"]]
    assert bank.identity()["embeddings"] == bank.digest == sharded_digest(out, metas)
    rows = np.load(out / "shard-00001-of-00003" / "embeddings.npy")
    np.save(out / "shard-00001-of-00003" / "embeddings.npy", rows[::-1].copy())
    with pytest.raises(BankError) as e:
        Bank.load(out, tiny_model)
    assert str(e.value) == f"{out / 'shard-00001-of-00003'}: embeddings.npy {CHANGED}"


def test_a_shard_swapped_for_another_is_refused(tiny_model, sharded):
    out, _ = sharded
    a, b = out / "shard-00000-of-00003", out / "shard-00001-of-00003"
    os.rename(a, out / "tmp")
    os.rename(b, a)
    os.rename(out / "tmp", b)  # two complete shards of 4 rows, each passing its own checksums
    with pytest.raises(BankError) as e:
        Bank.load(out, tiny_model)
    assert str(e.value) == (
        f"{out}: shard-00000-of-00003/bank.json does not match its checksum in bank.json (the shard was changed or "
        "replaced after the bank was built); rebuild the bank"
    )


def test_a_host_verifies_the_shards_it_holds_and_every_shards_items(tiny_model, sharded, monkeypatch):
    out, emb = sharded
    monkeypatch.setattr(distributed, "process_count", lambda: 2)
    monkeypatch.setattr(distributed, "process_index", lambda: 1)
    host = HostShardedBank(out, tiny_model)  # process 1 of 2 holds shards 1 and 2: rows 4–11
    assert host.offset == 4 and host.local.size == 8 and host.size == 12
    np.testing.assert_allclose(host.local.embeddings, emb[4:], atol=1e-6)
    assert host.identity()["embeddings"] == Bank.load(out).digest == host.digest
    shard0 = out / "shard-00000-of-00003"
    shutil.copytree(shard0, out.parent / "shard0")
    rows = np.load(shard0 / "embeddings.npy")
    np.save(shard0 / "embeddings.npy", rows[::-1].copy())
    HostShardedBank(out, tiny_model)  # the rows of a shard another host holds are not read here
    (shard0 / "items.json").write_text(json.dumps({"items": list("abcd"), "ids": list("abcd")}))
    with pytest.raises(BankError) as e:  # but its item list is verified: every host names every row
        HostShardedBank(out, tiny_model)
    assert str(e.value) == f"{shard0}: items.json {CHANGED}"
    shutil.rmtree(shard0)
    shutil.copytree(out.parent / "shard0", shard0)
    rows = np.load(out / "shard-00001-of-00003" / "embeddings.npy")
    rows[0] = rows[1]
    np.save(out / "shard-00001-of-00003" / "embeddings.npy", rows)
    with pytest.raises(BankError) as e:
        HostShardedBank(out, tiny_model)
    assert str(e.value) == f"{out / 'shard-00001-of-00003'}: embeddings.npy {CHANGED}"


def test_resuming_a_sharded_build_of_an_older_format_is_refused(tiny_model, sharded):
    out, _ = sharded
    job = json.loads((out / "job.json").read_text())
    del job["bank_format"]
    (out / "job.json").write_text(json.dumps(job))
    with pytest.raises(InputError, match='bank_format: "<absent>" then, 3 now'):
        build_from_embeddings(
            tiny_model, out, open_embeddings(out.parent / "e.npy", "text"), shard_size=4, sharded=True, progress=False
        )


# ------------------------------------------------------------------------------------------ saving


def test_a_full_disk_leaves_nothing_and_says_so(tiny_model, image_bank, tmp_path, monkeypatch):
    target = tmp_path / "bank"
    image_bank.save(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(bank_module.np, "save", full)
    with pytest.raises(OutputError) as e:
        text_bank(tiny_model).save(target)
    assert str(e.value) == (
        f"{target}: cannot write the bank (No space left on device); nothing was written, and a bank already there "
        "is unchanged"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["bank"]  # no temporary directory left
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    with pytest.raises(OutputError):
        text_bank(tiny_model).save(tmp_path / "new")
    assert [p.name for p in tmp_path.iterdir()] == ["bank"]


def test_two_saves_of_one_bank_never_share_a_temporary_directory(tiny_model, tmp_path, monkeypatch):
    target = tmp_path / "bank"
    first, second = text_bank(tiny_model, n=30), text_bank(tiny_model, n=20, labels=False)
    real_save, seen = np.save, []

    def save_and_interleave(path, *args, **kwargs):  # while the first save writes, a second one runs whole
        seen.append(os.path.dirname(path))
        if len(seen) == 1:
            second.save(target)
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(bank_module.np, "save", save_and_interleave)
    first.save(target)
    monkeypatch.undo()
    assert len(set(seen[:2])) == 2 and all(os.path.basename(s).startswith(".bank.tmp-") for s in seen)
    loaded = Bank.load(target, tiny_model)  # the last rename wins, whole: the first bank, not a mix
    assert loaded.items == first.items and loaded.identity() == first.identity()
    np.testing.assert_array_equal(loaded.labels, first.labels)
    assert [p.name for p in tmp_path.iterdir()] == ["bank"]


def test_stale_temporaries_of_a_killed_save_are_removed_on_request(tiny_model, tmp_path):
    target = tmp_path / "bank"
    for name in (".bank.tmp-abc123", ".bank.old-0f0f0f0f", ".banks.tmp-1", ".other.tmp-2", "bank2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "embeddings.npy").write_bytes(b"partial")
    text_bank(tiny_model).save(target)  # by default a save leaves them: another run may be writing them
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".bank.old-0f0f0f0f",
        ".bank.tmp-abc123",
        ".banks.tmp-1",
        ".other.tmp-2",
        "bank",
        "bank2",
    ]
    text_bank(tiny_model).save(target, remove_stale=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".banks.tmp-1", ".other.tmp-2", "bank", "bank2"]
    (tmp_path / ".bank.tmp-zzz").mkdir()
    assert remove_stale_temporaries(target) == [tmp_path / ".bank.tmp-zzz"]
    assert remove_stale_temporaries(tmp_path / "missing" / "bank") == []
    assert len(Bank.load(target, tiny_model)) == 40


def test_a_bank_saved_into_an_unwritable_directory_is_an_output_error(tiny_model, tmp_path, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    if os.access(parent, os.W_OK):  # root writes anywhere: make the temporary directory fail as it would

        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

        monkeypatch.setattr(index_module.tempfile, "mkdtemp", refuse)
    try:
        with pytest.raises(OutputError) as e:
            text_bank(tiny_model).save(parent / "bank")
        assert str(e.value) == (
            f"{parent / 'bank'}: cannot write the bank (Permission denied); nothing was written, and a bank already "
            "there is unchanged"
        )
    finally:
        parent.chmod(0o755)
    assert list(parent.iterdir()) == []
