"""Commands for one vector per image: embed, search."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .common import (
    EXIT_USAGE, BankOption, Color, MaxPixels, ModelOption, PipelineOption, Pooling, RawDtype, Scheduler, Workers, app,
    check_one_source, check_output_or_fail, close_cluster, echo, echo_json, end_if_interrupted, exit_batch, fail,
    open_cluster, report_failures, stoppable,
)

@app.command()
def embed(
    inputs: Annotated[List[str], typer.Argument(help="Image files, folders (walked recursively) or globs.", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder: embeddings.npy, index.csv, embed.json.")],
    bank: BankOption = None,
    pipeline: PipelineOption = None,
    model: ModelOption = None,
    color: Annotated[Color, typer.Option(help="Read images as luminance (gray) or as R, G, B channels (a model reads its own).")] = Color.gray,
    layer: Annotated[Optional[str], typer.Option("--layer", help="Layer to embed: an index (negative from the end), 'last', a name (layer<i>), or a kind that occurs once (default: a pipeline's last layer; a model's classifier input).")] = None,
    pool: Annotated[Optional[Pooling], typer.Option("--pool", help="How a layer's maps become one vector: gap (mean), gmp (max), gem (generalised mean, p=3), stats (mean and std).")] = None,
    no_normalize: Annotated[bool, typer.Option("--no-normalize", help="Keep rows as they are instead of L2-normalising them.")] = False,
    no_standardize: Annotated[bool, typer.Option("--no-standardize", help="Keep the pooled rows: do not centre each dimension on the index mean and scale it by its spread (the default from 16 images on, saved as OUT/pca.npz).")] = False,
    pca: Annotated[Optional[int], typer.Option("--pca", min=1, help="Fit PCA-whitening to this many dimensions on the embedded set (written to OUT/pca.npz).")] = None,
    pca_from: Annotated[Optional[Path], typer.Option("--pca-from", help="Apply a saved pca.npz, so these rows land in another index's space.")] = None,
    dtype: Annotated[RawDtype, typer.Option(help="Type of the stored rows; float16 halves the file.")] = RawDtype.float32,
    max_size: Annotated[Optional[int], typer.Option(min=1, help="Downscale images so the longer side is at most this many pixels.")] = None,
    max_pixels: MaxPixels = 100_000_000,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a run that stopped, keeping its rows.")] = False,
    append: Annotated[bool, typer.Option("--append", help="Add new images to a finished folder (same settings only).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace the index in OUT (only the files cnn embed writes; anything else there stays).")] = False,
    workers: Workers = None,
    scheduler: Scheduler = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run's summary as one JSON object on stdout.")] = False,
):
    """Write one feature vector per image: a matrix for retrieval, clustering or a classifier.

    Rows are pooled from a layer's maps and L2-normalised; index.csv gives each
    row's image (absolute paths). Bad images are named and skipped (exit 3).

    Examples:

      cnn embed photos/ -o index

      cnn embed photos/ -o index --pool gem --pca 64

      cnn embed photos/ -o index --bank color --color rgb --force

      cnn embed more/ -o index --append

      cnn embed photos/ -o index --model digits.npz --workers 2
    """
    from ..embed import EmbedOptions, run
    from ..layersel import OptionError
    from ..sources import load_source
    from ..terminal import ProgressDisplay

    if resume + append + force > 1:
        fail("give only one of --resume, --append and --force", EXIT_USAGE)
    check_one_source(bank, pipeline, model)
    check_output_or_fail(out)
    cluster = open_cluster(workers, scheduler, inputs, out)
    kept = (f"the rows embedded so far are kept in {out}/, and no unfinished file is left at a final path; "
            "continue with the same command and --resume")
    try:
        source = load_source(banks=bank, pipeline=pipeline, model=model and str(model), color=color.value)
        options = EmbedOptions(layer=layer, pool=pool and pool.value, normalize=not no_normalize, pca=pca,
                               pca_from=pca_from and str(pca_from), dtype=dtype.value, max_size=max_size,
                               max_pixels=max_pixels, resume=resume, append=append,
                               standardize=not no_standardize, force=force)
        with ProgressDisplay("embed") as progress, stoppable(kept) as stopped:
            summary = run(inputs, out, source, options, progress=progress, cluster=cluster)
    except OptionError as exc:  # a --layer the source does not have
        fail(str(exc), EXIT_USAGE)
    except (ValueError, FileExistsError) as exc:
        fail(str(exc))
    finally:
        close_cluster(cluster)
    end_if_interrupted(summary, stopped, kept)
    report_failures(summary.failed)
    if json_out:
        echo_json({"embedded": summary.done, "skipped": summary.skipped, "dimension": summary.dimension,
                   "seconds": round(summary.seconds, 3), "output": str(out),
                   "failed": [{"input": p, "error": m} for p, m in summary.failed]})
    else:
        echo(f"{summary.done} image(s) embedded in {summary.dimension} dimensions into {out}/ "
             f"in {summary.seconds:.1f} s; {summary.skipped} already there; {len(summary.failed)} failed", err=True)
    exit_batch(summary.failed, summary.done or summary.skipped)


@app.command()
def search(
    queries: Annotated[Optional[List[str]], typer.Argument(help="Query images (files, folders or globs).", show_default=False)] = None,
    index: Annotated[Path, typer.Option("--index", help="A folder written by cnn embed.")] = ...,
    k: Annotated[int, typer.Option("-k", min=1, help="Results per query (with --evaluate: the k of precision@k).")] = 5,
    evaluate: Annotated[bool, typer.Option("--evaluate", help="Score the index itself: leave-one-out precision@1, precision@k and mAP, with classes from the images' folders.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON: a list with one object per query, best match first.")] = False,
):
    """Find the images of an index most similar to each query (cosine similarity, exact).

    Queries are embedded with the index's own settings (embed.json), PCA included.

    Examples:

      cnn search query.png --index index -k 5

      cnn search queries/ --index index --json

      cnn search --evaluate --index index
    """
    from ..embed import evaluate_index, search_images

    if evaluate == bool(queries):
        fail("give query images, or --evaluate alone", EXIT_USAGE)
    try:
        if evaluate:
            scores = evaluate_index(index, k)
        else:
            results, failed = search_images(queries, index, k)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    if evaluate:
        if scores["note"]:
            echo(f"Note: {scores['note']}", err=True)
        if json_out:
            echo_json(scores)
        else:
            typer.echo(f"{scores['queries']} queries in {scores['classes']} classes: "
                       f"precision@1 {scores['precision_at_1']:.3f}, precision@{scores['k']} "
                       f"{scores['precision_at_k']:.3f}, mAP {scores['mean_average_precision']:.3f}")
        return
    if json_out:
        echo_json(results)
    else:
        for entry in results:
            echo(entry["query"])
            for rank, hit in enumerate(entry["results"], 1):
                echo(f"  {rank}. {hit['score']:.4f}  {hit['path']}")
    report_failures(failed)
    exit_batch(failed, results)
