"""`pdrop-eval show`: run a prompt under a drop config and draw which image regions each stage keeps;
or draw them for a document of an evaluation run that stored its kept tokens (``save_kept=true``)."""



def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "show",
        help="answer a question about pictures under a drop config and draw the regions each stage keeps",
        description="Runs the checkpoint on the pictures and the question, prints the answer, and writes one PNG per "
        "picture: the original and one panel per drop stage with the dropped regions dimmed (LLaVA-NeXT: anyres grid "
        "with its newline tokens at the right, and the base tile). With --run and --doc, draws the same for a document "
        "of an lmms-eval / VLMEvalKit run evaluated with save_kept=true, from its statistics and logged answer.",
    )
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="picture files, in prompt order")
    parser.add_argument("--question", help="the question; <image> marks where each picture goes (default: pictures first)")
    parser.add_argument("--pretrained", help="checkpoint of a supported model family (folder or HF Hub id)")
    parser.add_argument("--run", metavar="OUT_DIR", help="an lmms-eval output folder or VLMEvalKit work dir (searched recursively)")
    parser.add_argument("--doc", metavar="ID", help="with --run: the document's doc_id (lmms-eval) or index (VLMEvalKit)")
    parser.add_argument("--task", help="with --run: the task (lmms-eval) or dataset (VLMEvalKit), when several have that document")
    parser.add_argument(
        "--drop",
        default="layer_list=8;16;24,lambda=0.5",
        metavar="ARGS",
        help="drop config as the --model_args drop keys, e.g. 'fastv_k=2,fastv_r=0.5', 'drop_preset=pdrop-0.5' or "
        "'budget=25%%' (solved for the checkpoint; method=fastv for FastV's) (default: PyramidDrop %(default)s)",
    )
    parser.add_argument("--out", default=".", metavar="DIR", help="folder for the PNGs (default: current folder)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--pad-to-square", metavar="true|false", help="LLaVA-1.5: pad pictures to a square first (default: true for LLaVA-1.5, as the paper evaluated it)"
    )
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16, bfloat16 (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="e.g. cpu, cuda (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="overwrite existing PNGs")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.run is not None:
        if args.images or args.question or args.pretrained or args.doc is None:
            raise ValueError("--run takes --doc (and --task), not pictures, --question or --pretrained")
        return run_evaluated(args)
    if args.doc is not None or args.task is not None:
        raise ValueError("--doc and --task go with --run")
    missing = [name for name, value in (("IMAGE", args.images), ("--question", args.question), ("--pretrained", args.pretrained)) if not value]
    if missing:
        raise ValueError(f"give {', '.join(missing)} (or --run OUT_DIR --doc ID)")
    return run_prompt(args)


def run_prompt(args) -> int:
    from pathlib import Path

    from pdrop_eval.options import boolean, resolve_drop_option
    from pdrop_eval.report.files import check_writable
    from pdrop_eval.show import caption, drop_stages, write_pictures
    from pdrop_eval.token_map import image_token_regions
    from pdrop_eval.wrapper import LlavaRunner, Query

    paths = [Path(image) for image in args.images]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"image {path} does not exist")
    outputs = [Path(args.out) / f"image{number}_{path.stem}.png" for number, path in enumerate(paths, 1)]
    for output in outputs:
        check_writable(output, args.force)  # before the model loads, so a refusal costs nothing
    drop = resolve_drop_option(args.drop, args.pretrained, owner="--drop")
    query = Query.from_text(args.question, paths)
    pad_to_square = None if args.pad_to_square is None else boolean("--pad-to-square", args.pad_to_square)
    runner = LlavaRunner.load(args.pretrained, drop=drop, dtype=args.dtype, device=args.device, pad_to_square=pad_to_square)
    answer = runner.generate([query], max_new_tokens=args.max_new_tokens)[0]
    print(f"answer: {answer.text.strip()}")
    stages = drop_stages(drop, runner.model_dims["num_layers"], answer.stats.kept)
    for stage in stages:
        print(f"{stage.label}: {len(stage.kept)} of {answer.stats.num_image_tokens} image tokens kept")
    regions = image_token_regions(runner.processor, [image.size for image in query.images], runner.pad_to_square)
    if len(regions) != answer.stats.num_image_tokens:
        raise ValueError(f"the token map names {len(regions)} image tokens but the model saw {answer.stats.num_image_tokens}")
    text = caption(args.question, answer.text.strip(), drop, args.pretrained)
    for path in write_pictures(query.images, regions, stages, text, outputs, args.force):
        print(f"wrote {path}")
    return 0


def run_evaluated(args) -> int:
    """The pictures of one evaluated document, from the run's statistics (kept indices) and its logs."""
    from pathlib import Path

    from pdrop_eval.compat import ensure_torchvision_importable

    ensure_torchvision_importable()  # the image processor imports torchvision
    from transformers import AutoProcessor

    from pdrop_eval.keyvalue import parse_key_values
    from pdrop_eval.report.files import check_writable
    from pdrop_eval.show import caption, drop_stages, write_pictures
    from pdrop_eval.token_map import image_token_regions

    stats_path, run_stats, sample = _find_sample(Path(args.run), args.doc, args.task)
    where = f"{stats_path}: {sample.task} doc {sample.doc_id}"
    if sample.stats.kept is None:
        raise ValueError(f"{where} has no kept tokens; evaluate with the model arg save_kept=true")
    if run_stats.framework == "lmms-eval":
        from pdrop_eval.adapters.lmms.logged import lmms_document

        document = lmms_document(stats_path.parent / run_stats.results_file, sample.task, sample.doc_id)
    else:
        from pdrop_eval.adapters.vlmeval_logged import vlmeval_document

        document = vlmeval_document(stats_path.parent, run_stats.model, sample.task, sample.doc_id)
    prefix = f"{sample.task}_doc{sample.doc_id}"
    outputs = [Path(args.out) / f"{prefix}_image{number}.png" for number in range(1, len(document.images) + 1)]
    for output in outputs:
        check_writable(output, args.force)
    model_args = run_stats.model_args if isinstance(run_stats.model_args, dict) else parse_key_values(run_stats.model_args, "model_args key")
    processor = AutoProcessor.from_pretrained(run_stats.pretrained)
    sizes = [image.size for image in document.images]
    regions = image_token_regions(processor, sizes, _pad_to_square(run_stats.architecture, model_args))
    if len(regions) != sample.stats.num_image_tokens:
        raise ValueError(f"{where} had {sample.stats.num_image_tokens} image tokens, its pictures now map to {len(regions)}")
    stages = drop_stages(run_stats.drop, run_stats.model_dims["num_layers"], sample.stats.kept)
    print(f"{sample.task} doc {sample.doc_id}: {document.answer!r}")
    text = caption(document.question, document.answer, run_stats.drop, run_stats.pretrained)
    for path in write_pictures(document.images, regions, stages, text, outputs, args.force):
        print(f"wrote {path}")
    return 0


def _find_sample(run_dir, doc: str, task: str | None):
    """(statistics file, its RunStats, the SampleRecord) of the document `doc` (of `task`) under `run_dir`."""
    from pdrop_eval.stats import FILE_SUFFIX, read_run_stats

    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    files = sorted(run_dir.rglob(f"*{FILE_SUFFIX}"))
    if not files:
        raise FileNotFoundError(f"no pdrop-eval statistics file (*{FILE_SUFFIX}) under {run_dir}")
    found, tasks = [], set()
    for path in files:
        run_stats = read_run_stats(path)
        for sample in run_stats.samples:
            tasks.add(sample.task)
            if str(sample.doc_id) == str(doc) and task in (None, sample.task):
                found.append((path, run_stats, sample))
    if not found:
        raise ValueError(f"no document {doc}{f' of task {task}' if task else ''} in the statistics under {run_dir} (tasks: {', '.join(sorted(tasks))})")
    if len(found) > 1:
        places = ", ".join(f"{sample.task} in {path}" for path, _, sample in found)
        if task is not None:
            raise ValueError(f"document {doc} of task {task} is in several runs ({places}); pick one with a narrower --run")
        raise ValueError(f"document {doc} is in several runs or tasks ({places}); pick one with --task or a narrower --run")
    return found[0]


def _pad_to_square(architecture: str, model_args: dict) -> bool:
    """Whether the run padded LLaVA-1.5 pictures to a square (its pad_to_square model arg, or the default)."""
    from pdrop_eval.options import boolean, resolve_pad_to_square

    given = model_args.get("pad_to_square")
    return resolve_pad_to_square(architecture, None if given is None else boolean("pad_to_square", given))
