"""The plugin API: the trainer's own building blocks, for architecture and optimizer plugins.

    from cambrian.trainer.plugin_api import FieldEmbeddings, mlp, FIELDS

    class Model(nn.Module):
        def __init__(self, spec, cfg):
            super().__init__()
            self.emb = FieldEmbeddings(spec, cfg.embedding_dim, cfg.embedding_init_std)  # [B, F, dim]
            self.head = mlp([N_FIELDS * cfg.embedding_dim, *cfg.hidden], cfg.activation, cfg.dropout)
        def forward(self, batch):
            return self.head(self.emb(batch).flatten(1)).squeeze(-1)

What it offers (stable names; everything else in cambrian.trainer is internal):
- FieldEmbeddings(spec, dim, init_std): one embedding table per categorical field in FIELDS plus a linear
  projection of the dense features; forward(batch) -> [B, N_FIELDS, dim].
- mlp(sizes, activation, dropout, out=1): Linear/activation(/Dropout) layers; ACTIVATIONS names the activations.
- MLPRanker, DeepFM, DCNv2: the built-in architectures (subclass one, or wrap it), each (spec, cfg) -> logits [B].
- fm_interaction(e): the factorisation-machine second-order term of field vectors [B, F, dim] -> [B].
- cross_layer(x0, x, linear): one DCN-v2 cross step x0 * linear(x) + x.
- FeatureSpec, ArchitectureConfig, OptimizerConfig: the types of `spec` and `cfg`.
"""

from __future__ import annotations

from cambrian.trainer.config import ArchitectureConfig, OptimizerConfig
from cambrian.trainer.data import FeatureSpec
from cambrian.trainer.models import (ACTIVATIONS, FIELDS, N_FIELDS, DCNv2, DeepFM, FieldEmbeddings, MLPRanker,
                                     cross_layer, fm_interaction, mlp)

__all__ = ["ACTIVATIONS", "FIELDS", "N_FIELDS", "ArchitectureConfig", "DCNv2", "DeepFM", "FeatureSpec", "FieldEmbeddings",
           "MLPRanker", "OptimizerConfig", "cross_layer", "fm_interaction", "mlp"]
