"""Data: reading Parquet/CSV, fitting and applying encoders, batches and batch sources."""
from multikpi.data.batches import Batch, batch_at, ordered_batches, shuffled_batches
from multikpi.data.encoders import EncodedData, FeatureEncoder
from multikpi.data.sources import BatchSource, InMemorySource
from multikpi.data.specs import ColumnSpec, LabelSpec
from multikpi.data.tabular import read_table, write_table

__all__ = ["Batch", "BatchSource", "ColumnSpec", "EncodedData", "FeatureEncoder", "InMemorySource", "LabelSpec",
           "batch_at", "ordered_batches", "read_table", "shuffled_batches", "write_table"]
