"""The error catalogue (docs/errors.md), case by case, through the command line: every case exits
with code 2, prints exactly one line naming the thing, what was allowed and what was received, and
leaves no output file behind. Each case id matches a row of docs/errors.md."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from multikpi.cli.main import main

CATALOGUE = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


def _write_config(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def _feed(feed_files, split="train") -> pa.Table:
    return pq.read_table(feed_files[split])


def _with_train(tmp_path: Path, config: dict, table: pa.Table, name: str = "bad.parquet") -> dict:
    path = tmp_path / name
    pq.write_table(table, path)
    config["data"]["train"] = str(path)
    return config


def _replace(table: pa.Table, column: str, values) -> pa.Table:
    return table.set_column(table.column_names.index(column), column, pa.array(values))


# --- config cases: (id, mutation of the tiny config, expected message) ----------------------------
CONFIG_CASES = [
    ("config-unknown-key", lambda c: c["model"].update(sharde=[8]), r"unknown key `model.sharde`; did you mean `shared`\?"),
    ("config-wrong-type", lambda c: c["train"].update(epochs="many"), r"`train.epochs`: .*integer.*Got 'many'"),
    ("config-not-allowed", lambda c: c.update(loss={"combine": "uncertanty"}),
     r"`loss.combine` must be one of sum, weighted, uncertainty, gradnorm, dwa. Got 'uncertanty'"),
    ("config-missing-key", lambda c: c["data"].pop("train"), r"`data.train` is required"),
    ("config-unknown-inputs-from", lambda c: c["tasks"]["dwell"].update(inputs_from=["clik"]),
     r"`tasks.dwell.inputs_from` must name tasks among \['click', 'convert', 'dwell'\]. Got 'clik'"),
    ("config-unknown-weight-task", lambda c: c.update(loss={"combine": "weighted", "weights": {
        "click": 1, "dwell": 1, "convert": 1, "ctr": 2}}), r"`loss.weights` must name tasks among .* Got \['ctr'\]"),
    ("config-weights-incomplete", lambda c: c.update(loss={"combine": "weighted", "weights": {"click": 1}}),
     r"`loss.weights` must give a weight for every task .* Missing \['convert', 'dwell'\]"),
    ("config-cycle", lambda c: (c["tasks"]["click"].update(inputs_from=["dwell"]),
                                c["tasks"]["dwell"].update(inputs_from=["click"])),
     r"`inputs_from` edges must not form a cycle. Got click -> dwell -> click"),
    ("config-negative-lr", lambda c: c.update(optim={"default": {"lr": -0.1}}),
     r"`optim.default.lr`: input should be greater than or equal to 0, or auto. Got -0.1"),
    ("config-lr-not-a-number", lambda c: c.update(optim={"groups": {"shared": {"lr": "fast"}}}),
     r"`optim.groups.shared.lr`: .*Got 'fast'"),
    ("config-train-on-regression", lambda c: c["tasks"]["convert"].update(train_on="dwell"),
     r"`tasks.convert.train_on` must name a binary task. Got 'dwell' \(regression\)"),
    ("config-unknown-optim-group", lambda c: c.update(optim={"groups": {"heads.ctr": {"lr": 0.1}}}),
     r"`optim.groups` keys must be among \[.*'heads.click'.*\]. Got \['heads.ctr'\]"),
    ("config-label-as-feature", lambda c: c["data"]["dense"].append("click"),
     r"label columns must not also be input features. Got \['click'\]"),
    ("config-log1p-not-dense", lambda c: c["data"].update(log1p=["user_id"]),
     r"`data.log1p` must name columns of `data.dense`. Got \['user_id'\]"),
]


@pytest.mark.parametrize("case, mutate, expected", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_errors(case, mutate, expected, tmp_path, tiny_config, capsys):
    mutate(tiny_config)
    _expect_cli_error(capsys, ["train", _write_config(tmp_path, tiny_config)], expected)
    assert not Path(tiny_config["out_dir"]).exists()


def test_config_file_errors(tmp_path, capsys):
    _expect_cli_error(capsys, ["validate", str(tmp_path / "nope.yaml")], r"config: file not found: '.*nope.yaml'")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    _expect_cli_error(capsys, ["validate", str(broken)], r"broken.yaml: is not valid YAML")
    good = tmp_path / "c.yaml"
    good.write_text(yaml.safe_dump({"data": {"train": "t.parquet", "dense": ["x"]},
                                    "tasks": {"click": {"kind": "binary", "label": "y"}}}))
    _expect_cli_error(capsys, ["validate", str(good), "train.epochs"], r"override must look like key.path=value. Got 'train.epochs'")


def test_several_problems_are_reported_at_once(tmp_path, tiny_config, capsys):
    tiny_config["loss"] = {"combine": "uncertanty"}
    tiny_config["train"]["epochs"] = 0
    tiny_config["model"]["sharde"] = [8]
    err = _expect_cli_error(capsys, ["validate", _write_config(tmp_path, tiny_config)], r"3 problems: \(1\)")
    assert "loss.combine" in err and "train.epochs" in err and "model.sharde" in err


# --- data cases -------------------------------------------------------------------------------
def _missing_file(tmp_path, config, feed_files):
    config["data"]["train"] = str(tmp_path / "absent.parquet")


def _corrupt_parquet(tmp_path, config, feed_files):
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(b"PAR1 this is not a parquet file PAR1")
    config["data"]["train"] = str(path)


def _empty_file(tmp_path, config, feed_files):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    config["data"]["train"] = str(path)


def _no_rows(tmp_path, config, feed_files):
    _with_train(tmp_path, config, _feed(feed_files).slice(0, 0))


def _missing_column(tmp_path, config, feed_files):
    _with_train(tmp_path, config, _feed(feed_files).drop(["affinity"]))


def _label_wrong_type(tmp_path, config, feed_files):
    table = _feed(feed_files)
    _with_train(tmp_path, config, _replace(table, "click", ["yes"] * table.num_rows))


def _label_outside_01(tmp_path, config, feed_files):
    table = _feed(feed_files)
    values = table.column("click").to_numpy().astype("int64")
    values[3] = 2
    _with_train(tmp_path, config, _replace(table, "click", values))


def _all_labels_null(tmp_path, config, feed_files):
    table = _feed(feed_files)
    _with_train(tmp_path, config, _replace(table, "dwell", pa.nulls(table.num_rows, pa.float32())))


def _inf_in_dense(tmp_path, config, feed_files):
    table = _feed(feed_files)
    values = table.column("price").to_numpy().copy()
    values[7] = float("inf")
    _with_train(tmp_path, config, _replace(table, "price", values))


def _csv_lines(table: pa.Table) -> list[str]:
    columns = table.column_names
    rows = table.to_pylist()
    return [",".join(columns)] + [",".join("" if r[c] is None else str(r[c]) for c in columns) for r in rows]


def _string_in_numeric(tmp_path, config, feed_files):
    lines = _csv_lines(_feed(feed_files).slice(0, 50))
    header = lines[0].split(",")
    cells = lines[10].split(",")
    cells[header.index("price")] = "cheap"
    lines[10] = ",".join(cells)
    path = tmp_path / "strings.csv"
    path.write_text("\n".join(lines) + "\n")
    config["data"]["train"] = str(path)


def _csv_encoding(tmp_path, config, feed_files):
    lines = [line.encode() for line in _csv_lines(_feed(feed_files).slice(0, 50))]
    for device in (b"ios", b"android", b"web"):
        lines[5] = lines[5].replace(device, b"\xff\xfe")  # not UTF-8
    path = tmp_path / "latin.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    config["data"]["train"] = str(path)


def _bad_suffix(tmp_path, config, feed_files):
    config["data"]["train"] = str(tmp_path / "data.xlsx")


def _float_ids(tmp_path, config, feed_files):
    table = _feed(feed_files)
    _with_train(tmp_path, config, _replace(table, "item_id", table.column("item_id").to_numpy() + 0.5))


DATA_CASES = [
    ("data-missing-file", _missing_file, r"data file '.*absent.parquet' does not exist"),
    ("data-corrupt-parquet", _corrupt_parquet, r"data file '.*corrupt.parquet' is not readable parquet"),
    ("data-empty-file", _empty_file, r"data file '.*empty.csv' is empty \(0 bytes\)"),
    ("data-no-rows", _no_rows, r"data file '.*bad.parquet' has no rows"),
    ("data-missing-column", _missing_column, r"has no column\(s\) \['affinity'\]"),
    ("data-label-wrong-type", _label_wrong_type, r"label column 'click' of task 'click' must be numeric. Got type string"),
    ("data-label-outside-01", _label_outside_01, r"label column 'click' of binary task 'click' must be 0 or 1 \(or null\). Got 2 in 1 of"),
    ("data-all-labels-null", _all_labels_null, r"task 'dwell' has no labelled rows in the training data"),
    ("data-inf-dense", _inf_in_dense, r"dense column 'price' must be finite or null. Got 1 infinite value"),
    ("data-string-in-numeric", _string_in_numeric, r"dense column 'price' must be numeric. Got type string"),
    ("data-csv-encoding", _csv_encoding, r"latin.csv.*not valid UTF-8"),
    ("data-bad-suffix", _bad_suffix, r"data file '.*data.xlsx': the name must end in one of .parquet"),
    ("data-float-ids", _float_ids, r"categorical column 'item_id' must hold integer, string or boolean ids. Got type double"),
]


@pytest.mark.parametrize("case, setup, expected", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_data_errors(case, setup, expected, tmp_path, tiny_config, feed_files, capsys):
    setup(tmp_path, tiny_config, feed_files)
    _expect_cli_error(capsys, ["train", _write_config(tmp_path, tiny_config)], expected)
    assert not (Path(tiny_config["out_dir"]) / "manifest.json").exists()


# --- artifact cases ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, feed_files):
    from conftest import TINY_CONFIG
    from multikpi import train

    config = json.loads(json.dumps(TINY_CONFIG))
    config["data"].update({k: str(v) for k, v in feed_files.items()})
    return train(config, out_dir=tmp_path_factory.mktemp("runs") / "run").run_dir


def _copy_run(finished_run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    target.mkdir()
    for path in finished_run.rglob("*"):
        if path.is_file():
            (target / path.relative_to(finished_run)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(finished_run)).write_bytes(path.read_bytes())
    return target


def _tamper(run: Path) -> None:
    weights = run / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))


def _other_version(run: Path) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["version"] = "0.0.1"
    (run / "manifest.json").write_text(json.dumps(manifest))


ARTIFACT_CASES = [
    ("artifact-missing-file", lambda run: (run / "encoders" / "encoders.json").unlink(), r"is missing 'encoders/encoders.json'"),
    ("artifact-incomplete-run", lambda run: (run / "manifest.json").unlink(), r"has no manifest.json: the run did not finish"),
    ("artifact-other-version", _other_version, r"was written by multikpi 0.0.1; this is multikpi"),
    ("artifact-tampered-weights", _tamper, r"'model.safetensors' was modified after training \(sha256 mismatch\)"),
    ("artifact-no-run-dir", lambda run: None, r"run directory '.*nowhere' does not exist"),
]


@pytest.mark.parametrize("case, damage, expected", ARTIFACT_CASES, ids=[c[0] for c in ARTIFACT_CASES])
def test_artifact_errors(case, damage, expected, tmp_path, finished_run, feed_files, capsys):
    run = _copy_run(finished_run, tmp_path)
    damage(run)
    target = tmp_path / "nowhere" if case == "artifact-no-run-dir" else run
    out = tmp_path / "preds.parquet"
    _expect_cli_error(capsys, ["predict", str(target), str(feed_files["test"]), "--out", str(out)], expected)
    assert not out.exists()


def test_resume_errors(tmp_path, tiny_config, capsys):
    config_path = _write_config(tmp_path, tiny_config)
    _expect_cli_error(capsys, ["train", config_path, "--resume", str(tmp_path / "fresh")],
                      r"cannot resume: '.*fresh' has no config.yaml")


# --- runtime cases ----------------------------------------------------------------------------
def test_runtime_non_finite_loss(tmp_path, tiny_config, capsys):
    tiny_config["optim"] = {"default": {"name": "sgd", "lr": 1e12}}
    tiny_config["train"].update({"epochs": 3, "checkpoint_every": 1})
    _expect_cli_error(capsys, ["train", _write_config(tmp_path, tiny_config)],
                      r"non-finite loss at step \d+ in task\(s\) \['\w+'")
    assert (Path(tiny_config["out_dir"]) / "checkpoint.pt").exists()


def test_runtime_absurd_batch(tmp_path, tiny_config, capsys):
    tiny_config["model"]["shared"] = [3_000_000]
    _expect_cli_error(capsys, ["train", _write_config(tmp_path, tiny_config)],
                      r"`train.batch_size` 512 needs about [\d.]+ GiB for one step; [\d.]+ GiB is available")


def test_predict_missing_feature_column(tmp_path, finished_run, feed_files, capsys):
    table = _feed(feed_files, "test").drop(["price"])
    pq.write_table(table, tmp_path / "noprice.parquet")
    out = tmp_path / "p.csv"
    _expect_cli_error(capsys, ["predict", str(finished_run), str(tmp_path / "noprice.parquet"), "--out", str(out)],
                      r"has no column\(s\) \['price'\]")
    assert not out.exists()


def test_catalogue_lists_every_case():
    """docs/errors.md has a row for every case id tested here, and at least 30 in all."""
    text = CATALOGUE.read_text()
    ids = [c[0] for c in CONFIG_CASES + DATA_CASES + ARTIFACT_CASES]
    ids += ["config-file-missing", "config-bad-yaml", "config-bad-override", "config-several-problems",
            "artifact-resume-no-checkpoint", "artifact-resume-other-config", "runtime-non-finite-loss",
            "runtime-out-of-memory", "data-predict-missing-column"]
    missing = [i for i in ids if f"`{i}`" not in text]
    assert not missing, missing
    assert len(ids) >= 30


def _expect_cli_error(capsys, argv: list[str], expected: str) -> str:
    """Run the CLI in-process; assert exit 2 and one stderr line matching `expected`."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    last = err.splitlines()[-1] if err else ""
    assert "\n" not in last and last.startswith("multikpi "), err
    assert re.search(expected, last), f"{expected!r} not in {last!r}"
    return last
