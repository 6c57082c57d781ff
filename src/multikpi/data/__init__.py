"""Data: reading Parquet/CSV, fitting and applying encoders, batching, synthetic feeds."""
from multikpi.data.batches import Batch, batch_at, ordered_batches, shuffled_batches
from multikpi.data.encoders import EncodedData, FeatureEncoder
from multikpi.data.tabular import read_table, write_table

__all__ = ["Batch", "EncodedData", "FeatureEncoder", "batch_at", "ordered_batches", "read_table",
           "shuffled_batches", "write_table"]
