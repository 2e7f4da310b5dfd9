"""`recstack index build` (the FAISS index over the two-tower item embeddings) and `recstack index sweep`."""

from __future__ import annotations

import argparse
from pathlib import Path

from recstack.cliutil import add_dataset_argument, add_progress_argument
from recstack.errors import InputError
from recstack.paths import RunPaths

KIND_CHOICES = ("flat", "hnsw", "ivf_flat", "ivf_pq")  # recstack.retrieval.kinds.KINDS (no faiss import here)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _kind_list(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KIND_CHOICES]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"{bad[0] if bad else text!r} is not one of {', '.join(KIND_CHOICES)}")
    return kinds


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("index", help="build or sweep the FAISS item index")
    sub = parser.add_subparsers(dest="index_command", metavar="ACTION")
    sub.required = True

    build = sub.add_parser("build", help="index models/two_tower/item_embeddings.npy into runs/<ds>/index")
    add_dataset_argument(build)
    add_progress_argument(build)
    build.add_argument("--kind", choices=KIND_CHOICES, default="flat")
    build.add_argument("--hnsw-m", type=int, help="HNSW neighbours per node (default 32)")
    build.add_argument("--ef-construction", type=int, help="HNSW build beam width (default 200)")
    build.add_argument("--ef-search", type=int, help="HNSW search beam width saved as default (default 128)")
    build.add_argument("--nlist", type=int, help="IVF lists (default 4*sqrt(N), at most N/39)")
    build.add_argument("--nprobe", type=int, help="IVF lists searched, saved as default (default 16)")
    build.add_argument("--pq-m", type=int, help="IVF-PQ sub-quantizers, must divide d (default 16)")
    build.add_argument("--pq-nbits", type=int, help="IVF-PQ bits per sub-quantizer code (default 8)")
    build.add_argument("--refine-factor", type=int,
                       help="IVF-PQ: keep exact vectors and re-score refine*k PQ candidates (default 0 = off)")
    build.add_argument("--train-size", type=int, help="IVF k-means sample (default min(N, 64*nlist))")
    build.set_defaults(handler=_build)

    sweep = sub.add_parser("sweep", help="recall@K vs exact search and latency per index kind and setting")
    add_dataset_argument(sweep)
    add_progress_argument(sweep)
    sweep.add_argument("--synthetic", type=int, metavar="N",
                       help="sweep N generated clustered vectors instead of the run's item embeddings")
    sweep.add_argument("--dim", type=int, default=128, help="dimension of --synthetic vectors (default 128)")
    sweep.add_argument("--spread", type=float, default=1.0,
                       help="--synthetic noise around cluster centres (default 1.0: cosine ~0.7 to the centre; "
                            "larger = harder)")
    sweep.add_argument("--kinds", type=_kind_list, default=list(KIND_CHOICES),
                       help="comma-separated kinds (default: all)")
    sweep.add_argument("--k", type=int, default=100, help="recall@K and results per query (default 100)")
    sweep.add_argument("--queries", type=int, default=500, help="queries for recall (default 500)")
    sweep.add_argument("--single", type=int, default=200, help="one-query searches timed per setting (default 200)")
    sweep.add_argument("--batch", type=int, default=64, help="queries per batch search (default 64)")
    sweep.add_argument("--batch-repeats", type=int, default=10, help="batch searches timed per setting (default 10)")
    sweep.add_argument("--hnsw-m", type=_int_list, default=[32], help="HNSW M values (default 32)")
    sweep.add_argument("--ef-construction", type=int, default=200, help="HNSW efConstruction (default 200)")
    sweep.add_argument("--nlist", type=_int_list, default=[None], help="IVF nlist values (default 4*sqrt(N))")
    sweep.add_argument("--nprobe", type=_int_list, default=None,
                       help="IVF nprobe values (default 1,2,4,...,256, capped at nlist)")
    sweep.add_argument("--ef-search", type=_int_list, default=None,
                       help="HNSW efSearch values (default 16,...,512, raised to k)")
    sweep.add_argument("--pq-m", type=_int_list, default=None, help="IVF-PQ m values (default d/4,d/2)")
    sweep.add_argument("--refine", type=_int_list, default=[0, 2],
                       help="IVF-PQ builds: 0 = PQ scores only, r > 0 = keep exact vectors and re-score r*k "
                            "PQ candidates (default 0,2)")
    sweep.add_argument("--threads", type=int, help="FAISS threads for batch searches (default: all cores)")
    sweep.add_argument("--min-recall", type=float, default=0.95, help="recall target for the chosen setting")
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--out", type=Path, help="PNG path (default runs/<ds>/reports/index_sweep*.png); "
                                                 "the rows go to the same name .json")
    sweep.set_defaults(handler=_sweep)


def _build(args: argparse.Namespace) -> int:
    from recstack.retrieval.index import build_index, load_item_embeddings

    paths = RunPaths.for_dataset(args.dataset)
    emb, ids = load_item_embeddings(paths)
    params = {name: getattr(args, name) for name in ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe",
                                                      "pq_m", "pq_nbits", "refine_factor", "train_size")}
    meta = build_index(emb, ids, kind=args.kind, out_dir=paths.index, progress=args.progress, **params)
    print(
        f"index: {paths.index} ({meta['kind']}, {meta['metric']}, d={meta['dimension']}, "
        f"{meta['count']} items, {meta['factory']}, built in {meta['build_s']:.2f} s)"
    )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    import numpy as np

    from recstack.io import write_json
    from recstack.retrieval import sweep as sw
    from recstack.retrieval.index import load_item_embeddings

    for name in ("k", "queries", "single", "batch", "batch_repeats", "dim", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    paths = RunPaths.for_dataset(args.dataset)
    if args.synthetic is not None:
        if args.synthetic < 1:
            raise InputError(f"--synthetic: must be >= 1, got {args.synthetic}")
        vectors, ids, queries = sw.synthetic_catalogue(args.synthetic, args.dim, args.queries, seed=args.seed,
                                                       spread=args.spread)
        source = f"synthetic {args.synthetic} x {args.dim} (clustered, spread {args.spread:g})"
        stem = f"index_sweep_synthetic-{args.synthetic}x{args.dim}"
    else:
        vectors, ids = load_item_embeddings(paths)
        queries = np.ascontiguousarray(sw.user_queries(paths, args.queries, seed=args.seed), dtype=np.float32)
        source, stem = f"{args.dataset} item embeddings {vectors.shape[0]} x {vectors.shape[1]}", "index_sweep"
    grid = sw.build_grid(args.kinds, vectors.shape[1], hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                         nlist=args.nlist, pq_m=args.pq_m, refine=args.refine)
    rows = sw.sweep(vectors, ids, queries, k=args.k, grid=grid, single=args.single, batch=args.batch,
                    batch_repeats=args.batch_repeats, threads=args.threads, nprobes=args.nprobe or sw.NPROBES,
                    ef_searches=args.ef_search or sw.EF_SEARCHES, progress=args.progress)
    png = args.out or paths.reports / f"{stem}.png"
    title = (f"{source}: {len(queries)} queries, recall@{args.k} vs exact; batch {args.batch} on "
             f"{args.threads or 'all'} thread(s)")
    sw.plot(rows, png, args.k, title)
    best = sw.choose(rows, args.min_recall)
    write_json(Path(png).with_suffix(".json"), {"source": source, "k": args.k, "queries": len(queries),
                                                "rows": rows, "chosen": best, "min_recall": args.min_recall})
    print(f"\n{title}\n{sw.format_table(rows, args.k)}\n")
    if best:
        print(f"fastest one-query setting with recall@{args.k} >= {args.min_recall}: {best['kind']} {best['build']} "
              f"{best['search']} (recall {best['recall']:.4f}, p50 {best['single_p50_ms']:.3f} ms, "
              f"p95 {best['single_p95_ms']:.3f} ms, {best['size_mb']:.1f} MB)")
    else:
        print(f"no setting reached recall@{args.k} >= {args.min_recall}")
    print(f"plot: {png}\nrows: {Path(png).with_suffix('.json')}")
    return 0
