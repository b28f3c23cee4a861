"""``slipway prompts compare``: the prompt A/B experiment from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from slipway.experiments.classify import (
    DEFAULT_DATASET,
    ENRON_ID_COLUMN,
    ENRON_LABEL_COLUMN,
    ENRON_TEXT_COLUMNS,
    Comparison,
    ExperimentError,
)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code=1)


def _ci(value: float, ci: tuple[float, float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def print_comparison(comparison: Comparison, console: Console = out) -> None:
    """The scores, the paired tests and the decision, as rich tables."""
    pct = f"{comparison.confidence:.0%} CI"
    scores = Table(title=escape(f"Prompts on {comparison.n} examples ({comparison.dataset})"))
    for column in (
        "",
        "prompt",
        "version",
        f"accuracy [{pct}]",
        f"F1 [{pct}]",
        "invalid",
        "errors",
    ):
        scores.add_column(column)
    for s in comparison.scores:
        scores.add_row(
            s.key.upper(),
            escape(s.name),
            escape(s.version),
            _ci(s.accuracy, s.accuracy_ci),
            _ci(s.f1, s.f1_ci),
            _ci(s.invalid_rate, s.invalid_rate_ci),
            f"{s.error_rate:.3f}",
        )
    console.print(scores)
    tests = Table(title="McNemar's exact test against A (paired, same examples)")
    for column in ("vs A", "both right", "only A right", "only it right", "both wrong", "p"):
        tests.add_column(column)
    if len(comparison.tests) > 1:
        tests.add_column("p (Bonferroni)")
    for t in comparison.tests:
        row = [
            t.challenger.upper(),
            str(t.both_right),
            str(t.only_baseline),
            str(t.only_challenger),
            str(t.both_wrong),
            f"{t.p_value:.4g}",
        ]
        tests.add_row(*row, *([f"{t.p_adjusted:.4g}"] if len(comparison.tests) > 1 else []))
    console.print(tests)
    console.print(f"Decision: {comparison.decision}", markup=False, highlight=False)


def compare(
    prompts: Annotated[
        list[str],
        typer.Argument(
            help="Two or more prompt versions: prompts:/name/3, prompts:/name@alias, name@alias, "
            "name/3, or a YAML file (name, template). The first is the baseline.",
            show_default=False,
        ),
    ],
    dataset: Annotated[
        Path,
        typer.Option(help="Labelled CSV (.gz too); default: the Enron spam set."),
    ] = DEFAULT_DATASET,
    size: Annotated[int, typer.Option(help="Examples in the sample.")] = 60,
    seed: Annotated[int, typer.Option(help="Seed of the sample and the bootstrap.")] = 0,
    balanced: Annotated[
        bool,
        typer.Option(
            "--balanced/--proportional",
            help="The same number of each label, or the set's own proportions.",
        ),
    ] = True,
    max_chars: Annotated[
        int, typer.Option(help="Characters of each text the prompt gets (cut there).")
    ] = 1000,
    text_column: Annotated[
        list[str] | None,
        typer.Option(help="Text column (repeat for several); default: Subject, Message."),
    ] = None,
    label_column: Annotated[str, typer.Option(help="Label column.")] = ENRON_LABEL_COLUMN,
    id_column: Annotated[
        str, typer.Option(help="Id column ('' for the row number).")
    ] = ENRON_ID_COLUMN,
    variable: Annotated[str, typer.Option(help="The template variable the text fills.")] = "email",
    positive: Annotated[
        str, typer.Option(help="Label whose F1 is reported ('' for macro F1).")
    ] = "spam",
    base_url: Annotated[
        str, typer.Option(help="OpenAI-compatible API (`slipway serve`'s /v1 by default).")
    ] = "http://127.0.0.1:3000/v1",
    model: Annotated[str, typer.Option(help="Model name the endpoint serves.")] = "slipway",
    api_key_env: Annotated[
        str, typer.Option(help="Environment variable holding the API key.")
    ] = "SLIPWAY_API_KEY",
    api_key_secret: Annotated[
        str | None,
        typer.Option(help="ZenML secret with key api_key (instead of --api-key-env)."),
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 4,
    rpm: Annotated[
        float, typer.Option(help="Client-side limit, requests per minute (0: none).")
    ] = 0.0,
    max_tokens: Annotated[int, typer.Option(help="Tokens each answer may have.")] = 8,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 120.0,
    attempts: Annotated[
        int, typer.Option(help="Tries per request (429, 5xx and connection errors).")
    ] = 6,
    json_label: Annotated[
        bool,
        typer.Option(help='Ask for {"label": ...} via response_format (constrained decoding).'),
    ] = False,
    alpha: Annotated[float, typer.Option(help="Significance level of the decision.")] = 0.05,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 2000,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI; default: the active ZenML stack's.")
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "prompt_ab",
    plot: Annotated[
        Path | None, typer.Option(help="Also save the plot here (PNG).", show_default=False)
    ] = None,
) -> None:
    """Compare prompt versions on a labelled classification set through an OpenAI-compatible
    endpoint: accuracy, F1, invalid outputs with bootstrap CIs, McNemar's exact test against
    the first prompt, the decision; all logged to MLflow."""
    import mlflow

    from slipway.experiments.classify import (
        Endpoint,
        api_key_from,
        compare_prompts,
        keys,
        load_labelled_csv,
        log_comparison,
        plot_comparison,
    )
    from slipway.prompts import resolve

    try:
        keys(len(prompts))
        data = load_labelled_csv(
            dataset,
            size,
            seed,
            text_columns=tuple(text_column or ENRON_TEXT_COLUMNS),
            label_column=label_column,
            id_column=id_column or None,
            balanced=balanced,
            max_chars=max_chars,
        )
        from slipway.cli import tracking_uri_of  # slipway.cli imports this module

        uri = tracking_uri_of(tracking_uri)
        resolved = []
        for ref in prompts:
            try:
                resolved.append(resolve(ref, tracking_uri=uri))
            except ValueError as exc:  # PromptError: a bad file or reference, a missing version
                raise ExperimentError(f"Cannot load prompt {ref!r}: {exc}") from exc
        endpoint = Endpoint(
            base_url=base_url,
            model=model,
            api_key=api_key_from(api_key_env, api_key_secret, _zenml_secret),
            concurrency=concurrency,
            requests_per_minute=rpm,
            max_tokens=max_tokens,
            seed=seed,
            timeout_s=timeout,
            attempts=attempts,
            json_label=json_label,
        )
        err.print(f"Sample: {data.counts()} from {data.source}", markup=False, highlight=False)
        comparison = compare_prompts(
            resolved,
            data,
            endpoint,
            positive=positive or None,
            alpha=alpha,
            variable=variable,
            resamples=resamples,
        )
    except ExperimentError as exc:
        raise _fail(str(exc)) from None
    print_comparison(comparison)
    if plot is not None:
        plot_comparison(comparison).savefig(plot, dpi=120)
        out.print(f"Plot: {plot}", markup=False, highlight=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="prompt-ab-" + "-vs-".join(p.name for p in resolved)):
        run_id = log_comparison(comparison, resolved, data, endpoint, refs=prompts)
    out.print(
        f"MLflow run {run_id} (experiment {experiment!r}, {uri})", markup=False, highlight=False
    )


def _zenml_secret(name: str) -> dict[str, str]:
    from slipway.cli import zenml_secret

    return zenml_secret(name)


def register(prompts_app: typer.Typer) -> None:
    """Add ``compare`` to the ``slipway prompts`` command group."""
    prompts_app.command("compare", no_args_is_help=True)(compare)
