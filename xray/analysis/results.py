"""The batch results table: one row per input file, written as Parquet or CSV to a path or any fsspec URL.

Columns: `file`, `model`, `version` (hub revision or a hash of the weights), `label`, one `p_<class>` per class,
`threshold` (the one `label` was decided with; empty for argmax models), `population` and `population_reason`
(whose threshold it is and why, for models with one per population; empty for a pooled threshold),
`in_scope` and `reasons` (the input gate's verdict), `error` (why the file could not be read; empty otherwise),
and `true_label` when the inputs carry one (a labelled dataset). Both `python -m xray predict --out` paths (single
process and `--ray`) write it through `ResultsWriter`, so their files are alike. In CSV, `in_scope` is true/false,
`reasons` are joined with " | " and probabilities have 6 decimals (as `predict --csv`); Parquet keeps full floats,
a nullable boolean and a list of reasons.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from xray.errors import XrayError

#: The threshold a row was decided with, and whose it is (`xray.inference.population.choose_threshold`).
THRESHOLD_COLUMNS = ("threshold", "population", "population_reason")
#: Output formats by file suffix.
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def is_url(path: str) -> bool:
    """True for an fsspec URL (`s3://...`, `gs://...`, `file://...`), False for a plain local path."""
    return "://" in str(path)


def output_format(out: str) -> str:
    """`parquet` or `csv` from the output's suffix; raises XrayError for anything else."""
    fmt = FORMATS.get(Path(str(out).split("?", 1)[0]).suffix.lower())
    if fmt is None:
        raise XrayError(f"Cannot tell the output format of '{out}': name it .parquet or .csv.")
    return fmt


def columns(label_names: Sequence[str], *, true_label: bool = False) -> list[str]:
    """Column names in order."""
    truth = ["true_label"] if true_label else []
    return ["file", "model", "version", "label", *[f"p_{n}" for n in label_names], *THRESHOLD_COLUMNS, "in_scope",
            "reasons", "error", *truth]  # fmt: skip


def arrow_schema(label_names: Sequence[str], *, true_label: bool = False) -> Any:
    """The table's `pyarrow.Schema` (probabilities float64, in_scope bool, reasons list<string>)."""
    import pyarrow as pa

    fields = [pa.field(name, pa.string()) for name in ("file", "model", "version", "label")]
    fields += [pa.field(f"p_{n}", pa.float64()) for n in label_names]
    fields += [pa.field("threshold", pa.float64()), pa.field("population", pa.string()),
               pa.field("population_reason", pa.string())]  # fmt: skip
    fields += [pa.field("in_scope", pa.bool_()), pa.field("reasons", pa.list_(pa.string())),
               pa.field("error", pa.string())]  # fmt: skip
    if true_label:
        fields.append(pa.field("true_label", pa.string()))
    return pa.schema(fields)


def result_row(
    file: str,
    model: str,
    version: str,
    label_names: Sequence[str],
    *,
    label: str | None = None,
    probabilities: dict[str, float] | None = None,
    in_scope: bool | None = None,
    reasons: Sequence[str] | None = None,
    error: str | None = None,
    threshold: float | None = None,
    population: str | None = None,
    population_reason: str | None = None,
) -> dict[str, Any]:
    """One row as a dict (None where a failed file has no value)."""
    row: dict[str, Any] = {"file": file, "model": model, "version": version, "label": label}
    for name in label_names:
        row[f"p_{name}"] = None if probabilities is None else float(probabilities[name])
    row.update(threshold=None if threshold is None else float(threshold), population=population,
               population_reason=population_reason or None)  # fmt: skip
    row.update(in_scope=in_scope, reasons=None if reasons is None else list(reasons), error=error)
    return row


def _csv_cells(row: dict[str, Any], names: Sequence[str]) -> list[str]:
    cells = []
    for name in names:
        value = row.get(name)
        if value is None:
            cells.append("")
        elif (name.startswith("p_") or name == "threshold") and isinstance(value, float):
            cells.append(f"{value:.6f}")
        elif name == "in_scope":
            cells.append(str(bool(value)).lower())
        elif name == "reasons":
            cells.append(" | ".join(value))
        else:
            cells.append(str(value))
    return cells


class ResultsWriter:
    """Append rows to a Parquet or CSV file (local path or fsspec URL) as they come, then close it.

    Use as a context manager: `with ResultsWriter(out, label_names) as w: w.write(rows)`. Rows are dicts from
    `result_row` (plus `true_label` when asked for); memory stays bounded by what one `write` call holds.
    """

    def __init__(self, out: str | Path, label_names: Sequence[str], *, true_label: bool = False) -> None:
        self.out = str(out)
        self.format = output_format(self.out)
        self.label_names = list(label_names)
        self.names = columns(self.label_names, true_label=true_label)
        self.true_label = true_label
        self.rows = 0
        self._binary: IO[bytes] | None = None
        self._text: io.TextIOWrapper | None = None
        self._csv: Any = None
        self._parquet: Any = None

    def __enter__(self) -> ResultsWriter:
        if is_url(self.out):
            import fsspec

            self._binary = fsspec.open(self.out, "wb").open()
        else:
            path = Path(self.out).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            self._binary = path.open("wb")
        if self.format == "csv":
            self._text = io.TextIOWrapper(self._binary, encoding="utf-8", newline="")
            self._csv = csv.writer(self._text)
            self._csv.writerow(self.names)
        else:
            import pyarrow.parquet as pq

            self._parquet = pq.ParquetWriter(self._binary, arrow_schema(self.label_names, true_label=self.true_label))
        return self

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows (dicts keyed by column name; missing keys are empty)."""
        rows = list(rows)
        if not rows:
            return
        if self._csv is not None:
            self._csv.writerows(_csv_cells(row, self.names) for row in rows)
        else:
            import pyarrow as pa

            schema = arrow_schema(self.label_names, true_label=self.true_label)
            self._parquet.write_table(pa.Table.from_pylist([{n: r.get(n) for n in self.names} for r in rows], schema))
        self.rows += len(rows)

    def __exit__(self, *exc_info: object) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._text is not None:
            self._text.close()  # closes the binary stream under it
        elif self._binary is not None:
            self._binary.close()
