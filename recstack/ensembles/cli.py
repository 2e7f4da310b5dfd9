"""`recstack export`: write the Triton model repository of a run."""

from __future__ import annotations

import argparse
import time

from recstack.ensembles.graph import (
    EXPLORATION_SHARE, EXPLORATION_WINDOW_S, INSTANCES, MAX_QUEUE_DELAY_US, PREFERRED_INSTANCE,
)
from recstack.paths import RunPaths


def register(subparsers: argparse._SubParsersAction) -> None:
    from recstack.cliutil import add_dataset_argument

    parser = subparsers.add_parser(
        "export", help="export the serving ensemble as a Triton model repository",
        description="Write triton_repo/<dataset>/: one python model per serving step "
                    "(Feast user features -> user tower -> FAISS -> Feast item features -> DLRM -> filter) "
                    "and an ensemble model `recommend` wiring them.")
    add_dataset_argument(parser)
    parser.add_argument("--top-k", type=int, default=100, help="candidates retrieved from FAISS (default 100)")
    parser.add_argument("--per-step", action="store_true",
                        help="one python model per step instead of one fused model (slower on CPU; for "
                             "scaling steps apart or inspecting each step's statistics)")
    parser.add_argument("--instances", type=int, default=INSTANCES,
                        help=f"CPU instances of each python model (default {INSTANCES}; each holds its own "
                             "copy of the index and item features)")
    parser.add_argument("--preferred-instance", action=argparse.BooleanOptionalAction, default=None,
                        help="give the first instance of each python model priority (Triton's rate limiter): "
                             "sequential requests stay on one instance, the others take what overlaps; "
                             "`recstack serve` starts tritonserver with --rate-limit=execution_count for it "
                             f"(default {'on' if PREFERRED_INSTANCE else 'off'} for the python backend)")
    parser.add_argument("--max-queue-delay-us", type=int, default=MAX_QUEUE_DELAY_US,
                        help=f"dynamic batching window in microseconds (default {MAX_QUEUE_DELAY_US}; -1: off)")
    parser.add_argument("--exploration-share", type=float, default=EXPLORATION_SHARE,
                        help="share of each list given to items added after training, so they collect "
                             f"feedback (0..1, default {EXPLORATION_SHARE}; 0: off)")
    parser.add_argument("--exploration-window-hours", type=float, default=EXPLORATION_WINDOW_S / 3600,
                        help="how long an added item stays in the exploration pool "
                             f"(default {EXPLORATION_WINDOW_S / 3600:.0f})")
    parser.add_argument("--diversity-lambda", type=float, default=1.0,
                        help="MMR lambda when a request gives none: 1 = the ranker's order (default), lower = "
                             "more diverse lists (0..1; see `recstack evaluate`'s trade-off table)")
    parser.add_argument("--freshness-weight", type=float, default=0.0,
                        help="weight of the items' time-decayed popularity when a request gives none (default 0)")
    parser.add_argument("--genre-cap", type=int, default=0,
                        help="most items of one genre per list when a request gives none (default 0: no cap)")
    parser.add_argument("--backend", choices=("python", "onnxruntime"), default="python",
                        help="python (default): every step a python model, ONNX run by onnxruntime inside "
                             "them (what this machine's tritonserver serves); onnxruntime: the user tower and "
                             "the DLRM as Triton onnxruntime-backend models, for NGC tritonserver images")
    parser.add_argument("--onnx-instance-kind", choices=("gpu", "cpu"), default="gpu",
                        help="with --backend onnxruntime: instance_group kind of the ONNX models (default gpu)")
    parser.add_argument("--no-deploy", action="store_true",
                        help="add the new version but keep serving the live one (`recstack models deploy` switches)")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from recstack.ensembles.graph import (
        ENSEMBLE_NAME, FUSED_NAME, export_ensemble, recommendation_graph, run_manifest,
    )

    from recstack.errors import InputError

    paths = RunPaths.for_dataset(args.dataset)
    if args.backend == "onnxruntime" and (args.per_step or args.no_deploy or args.preferred_instance):
        raise InputError("--backend onnxruntime: --per-step, --no-deploy and --preferred-instance do not apply "
                         "(the python steps between the ONNX models are fused, every model is version 1 and "
                         "has plain instances)")
    start = time.perf_counter()
    graph = recommendation_graph(paths, top_k=args.top_k, exploration_share=args.exploration_share,
                                 exploration_window_s=args.exploration_window_hours * 3600,
                                 rerank={"diversity_lambda": args.diversity_lambda,
                                         "freshness_weight": args.freshness_weight, "genre_cap": args.genre_cap})
    delay = None if args.max_queue_delay_us < 0 else args.max_queue_delay_us
    repo = export_ensemble(graph, paths.triton_repo, fuse=not args.per_step, instances=args.instances,
                           max_queue_delay_us=delay, manifest=run_manifest(paths), deploy=not args.no_deploy,
                           backend=args.backend, onnx_instance_kind=f"KIND_{args.onnx_instance_kind.upper()}",
                           preferred_instance=PREFERRED_INSTANCE if args.preferred_instance is None
                           else args.preferred_instance)
    names = " >> ".join(op.name for op in graph.ops)
    layout = "one model per step" if args.per_step else f"fused into `{FUSED_NAME}`"
    if args.backend == "onnxruntime":
        from recstack.ensembles.onnx_export import OnnxOp, split_graph

        models = split_graph(graph)
        names = " >> ".join(m.name for m in models)
        onnx = [m.name for m in models if isinstance(m, OnnxOp)]
        layout = (f"ONNX models {', '.join(onnx)} on Triton's onnxruntime backend "
                  f"({args.onnx_instance_kind.upper()} instances; needs an NGC tritonserver image, docker/)")
    print(f"export: {repo} (ensemble `{ENSEMBLE_NAME}`: {names}; {layout}) in {time.perf_counter() - start:.1f}s")
    return 0
