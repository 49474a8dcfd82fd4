"""A sharded bank split across the processes of a job: each host holds some shards' rows and index.

Every process of a ``jax.distributed`` job loads a contiguous range of the bank's shards (process 0 the
first ones), and the item metadata (ids, items, labels) of all of them. The engine's calls on the bank
(:meth:`HostShardedBank.search`, :meth:`~HostShardedBank.verify`, :meth:`~HostShardedBank.exhaustive`)
then become collective: every process answers the request of every process on its own rows, and the
answers are merged exactly — the search's top-k by score (:func:`~jaxplain.counterfactual.shards.merge_top_k`),
the verified counterfactuals by distance (:func:`~jaxplain.counterfactual.verify.merge_verified`), ties to
the lower row in both — so the result is what one process holding the whole bank finds.

The processes explain different pairs, so they do not make the same calls at the same time. Each call is
one *round*: every process contributes its request, or "nothing" while it waits (:meth:`close`), and
the rounds go on until every process has closed. Communication is two all-gathers per round
(:func:`jaxplain.distributed.allgather`); no server, no scheduler.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxplain import distributed
from jaxplain.counterfactual.bank import BANK_FILE, BankError, _check_model, _read_bank_meta, read_listing
from jaxplain.counterfactual.shards import merge_top_k
from jaxplain.counterfactual.verify import Verified, merge_verified
from jaxplain.errors import InputError
from jaxplain.objectives import Goal

if TYPE_CHECKING:
    from jaxplain.models.bundle import Model

NOTHING, CLOSE, SEARCH, VERIFY, EXHAUSTIVE, LEVELS = range(6)
WORK = (SEARCH, VERIFY, EXHAUSTIVE, LEVELS)


def owned_shards(num_shards: int, process_index: int, process_count: int) -> range:
    """The contiguous shards process ``process_index`` of ``process_count`` holds (as equal as can be)."""
    lo = process_index * num_shards // process_count
    return range(lo, (process_index + 1) * num_shards // process_count)


class HostShardedBank:
    """The part of a sharded bank (see :mod:`jaxplain.counterfactual.sharded_bank`) this process holds.

    Attributes:
      kind, size, dim, model_name, fingerprint: of the whole bank.
      ids, items, labels: of every row of the whole bank.
      offset: the first (global) row this process holds; ``local`` holds rows ``[offset, offset + local.size)``.
      digest: of the whole bank's embeddings, from the shards' verified checksums (as a loaded sharded
        :class:`~jaxplain.counterfactual.bank.Bank`'s ``digest``).
    """

    def __init__(self, directory: str | os.PathLike, model: Model | None = None):
        """Load this process's shards of the sharded bank ``directory`` (their files verified against their
        checksums) and every shard's item list and labels (verified too); with ``model``, refuse a bank
        made by another model, as :meth:`Bank.load <jaxplain.counterfactual.bank.Bank.load>` does."""
        from jaxplain.counterfactual.bank import Bank
        from jaxplain.counterfactual.sharded_bank import load_sharded, shard_entries, shard_meta, sharded_digest

        d = Path(directory)
        meta = _read_bank_meta(d)
        if not meta.get("shards"):
            raise BankError(f"{d}: not a sharded bank; a bank of one directory is searched whole on every host")
        listing = shard_entries(d, meta)
        count, me = distributed.process_count(), distributed.process_index()
        if len(listing) < count:
            raise BankError(f"{d}: {len(listing)} shards cannot be split across {count} processes")
        if model is not None:
            _check_model(d, meta["model_name"], meta["fingerprint"], meta["dim"], model)
        mine = owned_shards(len(listing), me, count)
        self.kind, self.size, self.dim = meta["kind"], meta["size"], meta["dim"]
        self.model_name, self.fingerprint = meta["model_name"], meta["fingerprint"]
        self.offset = listing[mine.start]["offset"]
        local = [{**listing[j], "offset": listing[j]["offset"] - self.offset} for j in mine]  # numbered from 0
        size = sum(e["size"] for e in local)
        self.local: Bank = load_sharded(d, {**meta, "shards": local, "size": size}, model)
        self.ids, self.items, labels, metas = [], [], [], []
        for entry in listing:  # every shard's bank.json, item list and labels verified; only mine's embeddings
            part = shard_meta(d, entry, meta)
            items, ids, shard_labels = read_listing(d / entry["name"], part)
            self.items += items
            self.ids += ids
            labels.append(shard_labels)
            metas.append(part)
        self.labels = np.concatenate(labels) if all(x is not None for x in labels) else None
        if len(self.ids) != self.size:
            raise BankError(f"{d}: its shards hold {len(self.ids)} items, {d / BANK_FILE} says {self.size}")
        self.digest = sharded_digest(d, metas)
        self._directory = d

    def __len__(self) -> int:
        return self.size

    def check_model(self, model: Model, where: str | os.PathLike = "bank") -> None:
        """As :meth:`Bank.check_model <jaxplain.counterfactual.bank.Bank.check_model>`."""
        _check_model(where, self.model_name, self.fingerprint, self.dim, model)

    def identity(self) -> dict[str, Any]:
        """What a job records about the bank (the same on every process): as :meth:`Bank.identity
        <jaxplain.counterfactual.bank.Bank.identity>`, with the directory, and the digest of every shard's
        verified embeddings checksum (:func:`~jaxplain.counterfactual.sharded_bank.sharded_digest`)."""
        return {"kind": self.kind, "size": self.size, "dim": self.dim, "fingerprint": self.fingerprint,
                "sharded": str(self._directory.resolve()), "embeddings": self.digest}  # fmt: skip

    def levels(self, queries, ks) -> np.ndarray:
        """As :func:`~jaxplain.objectives.retrieval_levels` over the whole bank: every host's highest scores for
        each query, merged, give the k-th and (k+1)-th of all (the midpoint is the level)."""
        ks = np.asarray(ks, np.int64)
        if len(ks) and (ks.min() < 1 or ks.max() >= self.size):
            bad = int(ks[(ks < 1) | (ks >= self.size)][0])
            raise InputError(f"top-{bad}: the bank has only {self.size} items to rank")
        out = self._round(LEVELS, {"q": np.asarray(queries, np.float32), "k": np.int64(ks.max() + 1 if len(ks) else 1)})
        top = out["scores"]
        rows = np.arange(len(ks))
        return ((top[rows, ks - 1] + top[rows, ks]) / 2).astype(np.float32)

    # ---------------------------------------------------------------------------------------- collective

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact merge of every host's search of its rows: ``(global rows [Q, k], scores [Q, k])``."""
        out = self._round(SEARCH, {"q": np.asarray(queries, np.float32), "k": np.int64(k)})
        return out["ids"], out["scores"]

    def verify(self, candidates, u0, goal, anchor, classes, scale, top: int, mesh=None) -> Verified:
        """Candidates ``[N, K]`` (global rows) verified by the hosts that hold them, merged by distance (each
        host on its own default device: ``mesh`` is not used here)."""
        payload = _problem(u0, goal, anchor, classes, scale, top)
        payload["cand"] = np.asarray(candidates, np.int32)
        return Verified(**self._round(VERIFY, payload))

    def exhaustive(self, u0, goal, anchor, classes, scale, top: int, mesh=None) -> Verified:
        """Every row of the bank verified (each host its own), merged by distance: the oracle."""
        return Verified(**self._round(EXHAUSTIVE, _problem(u0, goal, anchor, classes, scale, top)))

    def close(self) -> None:
        """Take part in the other processes' rounds until every process has closed (call once, at the end)."""
        while True:
            requests = distributed.allgather({"op": np.int64(CLOSE)})
            if all(int(r["op"]) == CLOSE for r in requests):
                return
            self._serve(requests)

    def _round(self, op: int, payload: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        requests = distributed.allgather({"op": np.int64(op), **payload})
        return self._serve(requests)[distributed.process_index()]

    def _serve(self, requests: list[dict[str, np.ndarray]]) -> dict[int, dict[str, np.ndarray]]:
        """Answer every process's request on this host's rows, gather every host's answers, merge them."""
        mine = {}
        for p, req in enumerate(requests):
            op = int(req["op"])
            if op in WORK:
                mine.update({f"{p}/{k}": v for k, v in self._answer(op, req).items()})
        answers = distributed.allgather(mine)
        merged = {}
        for p, req in enumerate(requests):
            op = int(req["op"])
            if op not in WORK:
                continue
            parts = [{k.split("/", 1)[1]: v for k, v in a.items() if k.startswith(f"{p}/")} for a in answers]
            if op in (SEARCH, LEVELS):
                ids, scores = merge_top_k([(x["ids"], x["scores"]) for x in parts], int(req["k"]))
                merged[p] = {"ids": ids, "scores": scores}
            else:
                merged[p] = merge_verified([Verified(**x) for x in parts], int(req["top"]))._asdict()
        return merged

    def _answer(self, op: int, req: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """This host's answer to one request, in global rows."""
        local, off = self.local, self.offset
        if op == SEARCH:
            ids, scores = local.search(req["q"], min(int(req["k"]), local.size))
            return {"ids": ids + off, "scores": scores}
        if op == LEVELS:  # exact scores against every local row, as retrieval_levels computes them
            k = min(int(req["k"]), local.size)
            s = req["q"] @ local.embeddings.T
            ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
            return {"ids": ids + off, "scores": np.take_along_axis(s, ids, axis=1)}
        goal = Goal(*(req[f"goal_{f}"] for f in Goal._fields))
        args = (req["u0"], goal, req["anchor"], req["classes"], float(req["scale"]))
        top = int(req["top"])
        if op == VERIFY:
            cand = req["cand"].astype(np.int64) - off
            cand = np.where((cand >= 0) & (cand < local.size), cand, -1)
            ver = local.verify(cand, *args, min(top, cand.shape[1]))
        else:
            ver = local.exhaustive(*args, min(top, local.size))
        ver = Verified(*(np.asarray(x) for x in ver))
        return ver._replace(ids=np.where(ver.valid, ver.ids + off, -1).astype(ver.ids.dtype))._asdict()


def _problem(u0, goal, anchor, classes, scale, top) -> dict[str, np.ndarray]:
    out = {"u0": np.asarray(u0, np.float32), "anchor": np.asarray(anchor, np.float32)}
    out.update({f"goal_{f}": np.asarray(v) for f, v in zip(Goal._fields, goal)})
    out.update({"classes": np.asarray(classes, np.float32), "scale": np.float32(scale), "top": np.int64(top)})
    return out
