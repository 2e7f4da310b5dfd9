"""Resident memory per item vector of a loaded IVF-PQ index, with and without ``IndexIDMap2``.

    .venv/bin/python benchmarks/index_memory.py [--n 1000000] [--dim 128] [--nlist 4096] [--pq-m 32]

Builds an ``ItemIndex`` (``ivf_pq``) on the index sweep's synthetic clustered catalogue and saves it,
plus its inner IVF-PQ alone (the ids then live only in the inverted lists). Each is then loaded in a
fresh Python process and the growth of its resident set (``VmRSS``) is divided by the vector count:
what a serving process pays per item, as opposed to the serialised size the sweep reports.
docs/scaling.md uses the figures of ``--n 1000000``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEASURE = """
import gc, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
import faiss
from recstack.retrieval.index import ItemIndex
gc.collect(); before = rss()
index = ItemIndex.load(sys.argv[2]).index if sys.argv[1] == "itemindex" else faiss.read_index(sys.argv[2])
gc.collect(); print((rss() - before) / index.ntotal)
"""


def rss_per_vector(kind: str, path: Path) -> float:
    """Bytes of resident memory per vector that loading ``path`` adds to a fresh process."""
    out = subprocess.run([sys.executable, "-c", MEASURE, kind, str(path)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--pq-m", type=int, default=32)
    args = parser.parse_args()

    import faiss

    from recstack.retrieval.index import ItemIndex
    from recstack.retrieval.sweep import synthetic_catalogue

    folder = Path(tempfile.mkdtemp(prefix="index-memory-"))
    try:
        vectors, ids, _ = synthetic_catalogue(args.n, args.dim, 10)
        start = time.perf_counter()
        index = ItemIndex.build(vectors, ids, "ivf_pq", nlist=args.nlist, pq_m=args.pq_m)
        built = time.perf_counter() - start
        del vectors
        index.save(folder / "itemindex")
        faiss.write_index(faiss.downcast_index(index.index.index), str(folder / "inner.faiss"))
        print(f"{args.n} x {args.dim}, {index.meta['factory']}, built in {built:.0f} s")
        for label, kind, path in (("ItemIndex (IndexIDMap2 + IVF-PQ)", "itemindex", folder / "itemindex"),
                                  ("bare IVF-PQ (ids in the inverted lists)", "raw", folder / "inner.faiss")):
            print(f"  {label:<42} {rss_per_vector(kind, path):8.1f} B per vector resident")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
