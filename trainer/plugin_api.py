"""The plugin API: the trainer's own building blocks, for architecture and optimizer plugins.

    from cambrian.trainer.plugin_api import FieldEmbeddings, mlp

    class Model(nn.Module):
        def __init__(self, spec, cfg):
            super().__init__()
            self.emb = FieldEmbeddings(spec, cfg.embedding_dim, cfg.embedding_init_std)  # [B, F, dim]
            self.head = mlp([spec.n_fields * cfg.embedding_dim, *cfg.hidden], cfg.activation, cfg.dropout)
        def forward(self, batch):
            return self.head(self.emb(batch).flatten(1)).squeeze(-1)

What a model receives is the data set's declared features (trainer/schema.py, `categorical` and `numeric`),
by name. `spec` (FeatureSpec) says which:
- spec.fields: the embedded fields, "user", "item", then each declared categorical feature by its column name
  (the world: "topic", "home_topic"; MovieLens: "gender", "occupation", the genres); spec.size(name) is the
  number of embedding rows a field needs (index 0 is reserved for a category training never saw).
- spec.dense: the declared numeric features by column name (the world: "length_min", "thumb_intensity";
  MovieLens: "age"), standardised with the training rows' mean and standard deviation.
- spec.categorical / spec.numeric: the full records (name, ref `table.column`, entity "user" or "item",
  vocabulary or mean/std); spec.n_users, spec.n_items; spec.n_fields: the vectors FieldEmbeddings returns.
`batch` holds int64[B] for every name in spec.fields, float32[B] for every name in spec.dense, and
batch["dense"], float32[B, len(spec.dense)], the numeric features stacked in spec.dense order.

What it offers (stable names; everything else in cambrian.trainer is internal):
- FieldEmbeddings(spec, dim, init_std): one embedding table per field in spec.fields plus a linear projection
  of batch["dense"] (when there are numeric features); forward(batch) -> [B, spec.n_fields, dim].
- mlp(sizes, activation, dropout, out=1): Linear/activation(/Dropout) layers; ACTIVATIONS names the activations.
- MLPRanker, DeepFM, DCNv2: the built-in architectures (subclass one, or wrap it), each (spec, cfg) -> logits [B].
- fm_interaction(e): the factorisation-machine second-order term of field vectors [B, F, dim] -> [B].
- cross_layer(x0, x, linear): one DCN-v2 cross step x0 * linear(x) + x.
- FeatureSpec, ArchitectureConfig, OptimizerConfig: the types of `spec` and `cfg`.
"""

from __future__ import annotations

from cambrian.trainer.config import ArchitectureConfig, OptimizerConfig
from cambrian.trainer.features import FeatureSpec
from cambrian.trainer.models import (ACTIVATIONS, DCNv2, DeepFM, FieldEmbeddings, MLPRanker, cross_layer,
                                     fm_interaction, mlp)

__all__ = ["ACTIVATIONS", "ArchitectureConfig", "DCNv2", "DeepFM", "FeatureSpec", "FieldEmbeddings", "MLPRanker",
           "OptimizerConfig", "cross_layer", "fm_interaction", "mlp"]
