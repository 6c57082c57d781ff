"""Artifacts: the run directory's layout, atomic writes, the manifest, and saving and loading a run."""
from multikpi.artifacts.files import write_atomic, write_json, write_jsonl, write_yaml
from multikpi.artifacts.manifest import verify_run, write_manifest
from multikpi.artifacts.metrics import RunMetrics
from multikpi.artifacts.run_dir import LoadedRun, RunArtifacts, load_run, save_run, serving_settings, start_run_dir
from multikpi.artifacts.serving import ServingSettings

__all__ = ["LoadedRun", "RunArtifacts", "RunMetrics", "ServingSettings", "load_run", "save_run", "serving_settings",
           "start_run_dir", "verify_run", "write_atomic", "write_manifest", "write_json", "write_jsonl", "write_yaml"]
