"""Commands for one vector per image: embed, search."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .common import (
    EXIT_FAILED, EXIT_PARTIAL, EXIT_USAGE, MaxPixels, Pooling, RawDtype, app, check_one_source,
    check_output_or_fail, close_cluster, echo_json, fail, open_cluster,
)

@app.command()
def embed(
    inputs: Annotated[List[str], typer.Argument(help="Image files, folders (walked recursively) or globs.", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder: embeddings.npy, index.csv, embed.json.")],
    bank: Annotated[Optional[List[str]], typer.Option("--bank", help="Features from this bank (name, file, or NAME:PATTERN). Repeatable.")] = None,
    pipeline: Annotated[Optional[str], typer.Option("--pipeline", help="Features from this pipeline (name or file) instead of the default.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Features from a trained model (by default, what feeds its classifier).")] = None,
    layer: Annotated[Optional[str], typer.Option("--layer", help="Layer to embed: an index, 'last', or a layer kind (default: a pipeline's last layer; a model's classifier input).")] = None,
    pool: Annotated[Optional[Pooling], typer.Option("--pool", help="How a layer's maps become one vector: gap (mean), gmp (max), gem (generalised mean, p=3), stats (mean and std).")] = None,
    no_normalize: Annotated[bool, typer.Option("--no-normalize", help="Keep rows as they are instead of L2-normalising them.")] = False,
    pca: Annotated[Optional[int], typer.Option("--pca", min=1, help="Fit PCA-whitening to this many dimensions on the embedded set (written to OUT/pca.npz).")] = None,
    pca_from: Annotated[Optional[Path], typer.Option("--pca-from", help="Apply a saved pca.npz, so these rows land in another index's space.")] = None,
    dtype: Annotated[RawDtype, typer.Option(help="Type of the stored rows; float16 halves the file.")] = RawDtype.float32,
    max_size: Annotated[Optional[int], typer.Option(min=1, help="Downscale images so the longer side is at most this many pixels.")] = None,
    max_pixels: MaxPixels = 100_000_000,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a run that stopped, keeping its rows.")] = False,
    append: Annotated[bool, typer.Option("--append", help="Add new images to a finished folder (same settings only).")] = False,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Run on a local Dask cluster of this many single-threaded worker processes.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Run on an existing Dask cluster (ADDRESS of its scheduler).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run's summary as one JSON object on stdout.")] = False,
):
    """Write one feature vector per image: a matrix for retrieval, clustering or a classifier.

    Rows are pooled from a layer's maps and L2-normalised; index.csv gives each
    row's image (absolute paths). Bad images are named and skipped (exit 3).

    Examples:

      cnn embed photos/ -o index

      cnn embed photos/ -o index --pool gem --pca 64

      cnn embed more/ -o index --append

      cnn embed photos/ -o index --model digits.npz --workers 2
    """
    from ..embed import EmbedOptions, run
    from ..sources import load_source

    if resume and append:
        fail("give only one of --resume and --append", EXIT_USAGE)
    check_one_source(bank, pipeline, model)
    check_output_or_fail(out)
    if workers and scheduler:
        fail("give only one of --workers and --scheduler", EXIT_USAGE)
    cluster = open_cluster(workers, scheduler)
    try:
        source = load_source(banks=bank, pipeline=pipeline, model=model and str(model))
        options = EmbedOptions(layer=layer, pool=pool and pool.value, normalize=not no_normalize, pca=pca,
                               pca_from=pca_from and str(pca_from), dtype=dtype.value, max_size=max_size,
                               max_pixels=max_pixels, resume=resume, append=append)
        from ..terminal import ProgressDisplay

        with ProgressDisplay("embed") as progress:
            summary = run(inputs, out, source, options, progress=progress, cluster=cluster)
    except (ValueError, FileExistsError) as exc:
        fail(str(exc))
    finally:
        close_cluster(cluster)
    for _, message in summary.failed:
        typer.echo(f"Error: {message}", err=True)
    if json_out:
        echo_json({"embedded": summary.done, "skipped": summary.skipped, "dimension": summary.dimension,
                   "seconds": round(summary.seconds, 3), "output": str(out),
                   "failed": [{"input": p, "error": m} for p, m in summary.failed]})
    else:
        typer.echo(f"{summary.done} image(s) embedded in {summary.dimension} dimensions into {out}/ "
                   f"in {summary.seconds:.1f} s; {summary.skipped} already there; {len(summary.failed)} failed",
                   err=True)
    if summary.failed:
        raise typer.Exit(EXIT_PARTIAL if summary.done or summary.skipped else EXIT_FAILED)


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
            typer.echo(entry["query"])
            for rank, hit in enumerate(entry["results"], 1):
                typer.echo(f"  {rank}. {hit['score']:.4f}  {hit['path']}")
    for _, message in failed:
        typer.echo(f"Error: {message}", err=True)
    if failed:
        raise typer.Exit(EXIT_PARTIAL if results else EXIT_FAILED)
