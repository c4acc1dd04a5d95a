"""Registered ranking architectures (the architecture persona can also write its own plugin).

Every model maps a batch (see trainer/plugins.py) to one logit per row; its fields are the declared features
(trainer/features.py FeatureSpec). Embeddings start at a small
standard deviation: N(0, 1) embeddings wreck FM-style terms (reference notes, section 2.3).
"""

from __future__ import annotations

import torch
from torch import nn

from cambrian.trainer.config import ARCHITECTURE_NAMES, ArchitectureConfig
from cambrian.trainer.features import FeatureSpec

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def mlp(sizes: list[int], activation: str, dropout: float, out: int | None = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
        if dropout:
            layers.append(nn.Dropout(dropout))
    if out is not None:
        layers.append(nn.Linear(sizes[-1], out))
    return nn.Sequential(*layers)


class FieldEmbeddings(nn.Module):
    """One embedding table per embedded field (user, item, each declared categorical feature); the numeric
    features (batch["dense"]) pass through one linear projection. `n_fields` = spec.n_fields vectors."""

    def __init__(self, spec: FeatureSpec, dim: int, init_std: float):
        super().__init__()
        self.fields = spec.fields
        self.n_fields = spec.n_fields
        # a list, not a dict: a declared column's name need not be a valid module name ("Children's")
        self.tables = nn.ModuleList(nn.Embedding(spec.size(f), dim) for f in self.fields)
        for table in self.tables:
            nn.init.normal_(table.weight, std=init_std)
        self.dense = nn.Linear(len(spec.dense), dim) if spec.dense else None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Field vectors, shape [B, n_fields, dim] (the last one the dense projection, when there are numerics)."""
        fields = [table(batch[f]) for f, table in zip(self.fields, self.tables)]
        if self.dense is not None:
            fields.append(self.dense(batch["dense"]))
        return torch.stack(fields, dim=1)


def fm_interaction(e: torch.Tensor) -> torch.Tensor:
    """Second-order factorisation-machine term of field vectors [B, F, dim]: one value per row."""
    return 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1)).sum(-1)


def cross_layer(x0: torch.Tensor, x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """One DCN-v2 cross step: x0 * (W x + b) + x."""
    return x0 * linear(x) + x


class MLPRanker(nn.Module):
    def __init__(self, spec: FeatureSpec, cfg: ArchitectureConfig):
        super().__init__()
        self.emb = FieldEmbeddings(spec, cfg.embedding_dim, cfg.embedding_init_std)
        n_in = spec.n_fields * cfg.embedding_dim
        self.head = mlp([n_in, *cfg.hidden], cfg.activation, cfg.dropout)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.emb(batch).flatten(1)).squeeze(-1)


class DeepFM(nn.Module):
    """Linear + factorisation-machine second-order term + DNN over the field embeddings."""

    def __init__(self, spec: FeatureSpec, cfg: ArchitectureConfig):
        super().__init__()
        self.emb = FieldEmbeddings(spec, cfg.embedding_dim, cfg.embedding_init_std)
        n_in = spec.n_fields * cfg.embedding_dim
        self.linear = nn.Linear(n_in, 1)
        self.dnn = mlp([n_in, *cfg.hidden], cfg.activation, cfg.dropout)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        e = self.emb(batch)
        flat = e.flatten(1)
        return (self.linear(flat) + self.dnn(flat)).squeeze(-1) + fm_interaction(e)


class DCNv2(nn.Module):
    """Cross layers x_{l+1} = x0 * (W x_l + b) + x_l, in parallel with an MLP."""

    def __init__(self, spec: FeatureSpec, cfg: ArchitectureConfig):
        super().__init__()
        self.emb = FieldEmbeddings(spec, cfg.embedding_dim, cfg.embedding_init_std)
        n_in = spec.n_fields * cfg.embedding_dim
        self.cross = nn.ModuleList(nn.Linear(n_in, n_in) for _ in range(cfg.cross_layers))
        self.deep = mlp([n_in, *cfg.hidden], cfg.activation, cfg.dropout, out=None)
        self.out = nn.Linear(n_in + (cfg.hidden[-1] if cfg.hidden else n_in), 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0 = self.emb(batch).flatten(1)
        x = x0
        for layer in self.cross:
            x = cross_layer(x0, x, layer)
        return self.out(torch.cat([x, self.deep(x0)], dim=1)).squeeze(-1)


ARCHITECTURES = {"mlp": MLPRanker, "deepfm": DeepFM, "dcn": DCNv2}
assert tuple(ARCHITECTURES) == ARCHITECTURE_NAMES, "trainer/config.py lists the built-in architectures"


def build_model(spec: FeatureSpec, cfg: ArchitectureConfig) -> nn.Module:
    """The registered architecture by name, or the candidate's plugin class when it carries code."""
    if cfg.code:
        from cambrian.trainer.plugins import load_plugin

        return load_plugin(cfg.code, "architecture")(spec, cfg)
    if cfg.name not in ARCHITECTURES:
        from cambrian.errors import GateError

        raise GateError("static", f"unknown architecture {cfg.name!r}; registered: {', '.join(ARCHITECTURES)}",
                        hint="or supply plugin code defining class Model")
    return ARCHITECTURES[cfg.name](spec, cfg)


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """For `model`'s parameters: a torch.optim class by name with lr/weight_decay/params (fused where torch can,
    see _fused_where_possible), or the candidate's build_optimizer(params, cfg)."""
    from cambrian.errors import GateError

    params = list(model.parameters())
    if cfg.code:
        from cambrian.trainer.plugins import load_plugin

        opt = load_plugin(cfg.code, "optimizer")(params, cfg)
        if not isinstance(opt, torch.optim.Optimizer):
            raise GateError("forward_backward", "build_optimizer must return a torch.optim.Optimizer")
        return opt
    cls = getattr(torch.optim, cfg.name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise GateError("static", f"unknown optimizer {cfg.name!r}; use a torch.optim class name such as Adam, AdamW, Adagrad, SGD")
    settings = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, **cfg.params}
    # torch's fused steps refuse sparse gradients, which an embedding declared sparse gives
    sparse = any(getattr(m, "sparse", False) is True for m in model.modules())
    try:
        return cls(params, **settings) if sparse else _fused_where_possible(cls, params, settings)
    except (TypeError, ValueError) as exc:
        raise GateError("static", f"optimizer {cfg.name} rejected its settings: {exc}") from None


def _fused_where_possible(cls: type, params: list, settings: dict) -> torch.optim.Optimizer:
    """torch's fused implementation (one kernel updates every parameter) when the class has one and Φ chose
    neither `fused` nor `foreach`: on one CPU thread a fused step of Adam over the baseline's parameters took
    134 µs against 473 µs, with the same results to float rounding. Where torch refuses it (a device or dtype
    it does not fuse, an older torch, a setting fusion excludes) the class's own default stands. The optimizer
    is marked `fused_by_default`, so that a step that fails says how to opt out."""
    import inspect

    if {"fused", "foreach"} & set(settings) or "fused" not in inspect.signature(cls.__init__).parameters:
        return cls(params, **settings)
    try:
        optimizer = cls(params, fused=True, **settings)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, **settings)
    optimizer.fused_by_default = True
    return optimizer


def fused_hint(optimizer: torch.optim.Optimizer) -> str:
    """What to add to a failed step's message when the fused step was Cambrian's choice, not Φ's."""
    if getattr(optimizer, "fused_by_default", False):
        return " (Cambrian ran torch's fused step, which Φ did not ask for: set optimizer.params.fused: false)"
    return ""
