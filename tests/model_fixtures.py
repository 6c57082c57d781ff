"""Build a real model, combiner and optimizers from a config dict on the tiny feed."""
from __future__ import annotations

import torch

from multikpi.config import config_from_dict
from multikpi.data import FeatureEncoder, batch_at, read_table
from multikpi.losses import build_combiner
from multikpi.models import build_model
from multikpi.training.setup import encoder_specs, needed_columns


def build_all(config_dict: dict):
    """(config, encoder, encoded train data, model, combiner) for `config_dict`."""
    config = config_from_dict(config_dict)
    table = read_table(config.data.train, needed_columns(config))
    encoder = FeatureEncoder.fit(table, *encoder_specs(config))
    data = encoder.encode(table)
    torch.manual_seed(0)
    model = build_model(config.model, config.tasks, encoder)
    combiner = build_combiner(config, model.shared.last_shared_layer().weight)
    return config, encoder, data, model, combiner


def first_batch(data, size: int = 256):
    return batch_at(data, torch.arange(size))
