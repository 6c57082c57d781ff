"""Build a real model, combiner and optimizers from a config dict on the tiny feed."""
from __future__ import annotations

import torch

from multikpi.config import config_from_dict
from multikpi.data import FeatureEncoder, batch_at, read_table
from multikpi.training import build_training
from multikpi.training.setup import encoder_specs, needed_columns


def build_all(config_dict: dict):
    """(config, encoder, encoded train data, model, combiner) for `config_dict`."""
    config = config_from_dict(config_dict)
    table = read_table(config.data.train, needed_columns(config))
    encoder = FeatureEncoder.fit(table, *encoder_specs(config))
    data = encoder.encode(table)
    torch.manual_seed(0)
    training = build_training(config, encoder)
    return config, encoder, data, training.model, training.combiner


def first_batch(data, size: int = 256):
    return batch_at(data, torch.arange(size))
