"""`hiseg evaluate` from the command line: clean errors with exit status 2 for a missing or
malformed dataset folder, bad settings and an unwritable output folder (checked before the
dataset is read); no tensorflow-datasets noise; a resume refusal that lists only the fields
that differ; an interrupted run (Ctrl-C) that resumes; the printed table, skipped image and
report; the recorded command line reproduces the settings."""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
from pathlib import Path

import pytest
from evaluate_cases import SMALL, SMALL_FLAGS, make_voc_pairs

from hiseg_jax import datasets
from hiseg_jax.cli import build_parser, main
from hiseg_jax.commands.evaluate import command_line, settings_from_args
from hiseg_jax.crf.dense_crf import CRFConfig
from hiseg_jax.crf.guided import GuidedConfig
from hiseg_jax.evaluation import result_files
from hiseg_jax.evaluation import runner as evaluation
from hiseg_jax.settings import settings_differences


def evaluate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["evaluate", "--no-progress", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_missing_dataset_folder(tmp_path, capsys):
    absent = tmp_path / "absent"
    code, out, err = evaluate(
        capsys,
        "--dataset",
        "voc2012",
        "--data-dir",
        str(absent),
        "--prepared-dir",
        str(tmp_path / "p"),
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and f"data folder {absent} does not exist" in err
    assert "Traceback" not in out + err and not (tmp_path / "o").exists()


def test_malformed_dataset_folder(tmp_path, capsys):
    root = tmp_path / "bsds"
    (root / "images" / "val").mkdir(parents=True)
    code, _, err = evaluate(
        capsys,
        "--dataset",
        "bsds500",
        "--data-dir",
        str(root),
        "--prepared-dir",
        str(tmp_path / "p"),
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and str(root / "groundTruth" / "val") in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dataset", "bsds500", "--matching", "hungarian"], "no classes"),
        (["--dataset", "voc2012", "--batch-size", "0"], "batch size must be >= 1"),
        (["--dataset", "voc2012", "--levels", "0"], "levels must be >= 1"),
        (
            ["--dataset", "voc2012", "--crf", "--resolution", "patch"],
            "the crf refinement works at pixel level: it needs resolution 'image', not 'patch'",
        ),
        (
            ["--dataset", "voc2012", "--refine", "guided", "--resolution", "patch"],
            "the guided refinement works at pixel level: it needs resolution 'image'",
        ),
    ],
)
def test_bad_settings(tmp_path, capsys, flags, message):
    code, _, err = evaluate(capsys, *flags, "--data-dir", str(tmp_path))
    assert code == 2 and message in err


def test_unwritable_out_stops_before_the_dataset_is_read(tmp_path, capsys, monkeypatch):
    def load(*args):
        raise AssertionError("the dataset was read")

    monkeypatch.setattr(evaluation, "load", load)
    (tmp_path / "afile").write_text("x")
    code, out, err = evaluate(
        capsys,
        "--dataset",
        "voc2012",
        "--data-dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "afile" / "run"),
    )
    assert code == 2 and "Traceback" not in out + err
    assert err.strip() == (
        f"hiseg evaluate: error: cannot write the output folder "
        f"{tmp_path / 'afile' / 'run'}: {tmp_path / 'afile'} is a file, "
        "not a folder"
    )


def test_preparing_a_local_dataset_prints_one_line_of_ours(tmp_path, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    source = make_voc_pairs(tmp_path / "voc")
    assert len(datasets.load("voc2012", source, "val", tmp_path / "prepared")) == 6
    out, err = capfd.readouterr()
    assert out == "" and err.strip().splitlines() == [
        f"hiseg: preparing voc2012 val from {source} (first use only) into "
        f"{tmp_path / 'prepared' / 'voc2012' / 'val' / '1.0.0'}"
    ]
    assert not [r for r in caplog.records if r.name == "absl" and r.levelno < logging.ERROR]
    assert len(datasets.load("voc2012", source, "val", tmp_path / "prepared")) == 6
    assert capfd.readouterr() == ("", "")  # prepared: silent


def test_settings_differences_name_only_the_fields_that_differ():
    old = {"seed": 0, "partition": {"levels": 9, "n_parts": 200}, "crf": None, "gone": 1}
    new = {"seed": 2, "partition": {"levels": 3, "n_parts": 200}, "crf": {"n_iter": 5}}
    assert settings_differences(old, new) == [
        ("crf", "null", '{"n_iter": 5}'),
        ("gone", "1", "(absent)"),
        ("partition.levels", "9", "3"),
        ("seed", "0", "2"),
    ]


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> list[str]:
    """Flags naming the fake VOC dataset and where to prepare it."""
    root = tmp_path_factory.mktemp("data")
    return [
        "--dataset",
        "voc2012",
        "--data-dir",
        str(make_voc_pairs(root / "voc")),
        "--prepared-dir",
        str(root / "prepared"),
    ]


def test_size_not_fitting_the_patch(voc, tmp_path, capsys, default_checkpoint):
    code, _, err = evaluate(
        capsys, *voc, *SMALL_FLAGS, "--size", "100", "--out", str(tmp_path / "o")
    )
    assert code == 2 and "multiple of the patch size 14" in err


def test_resume_refusal_lists_only_the_changed_fields(voc, tmp_path, capsys, default_checkpoint):
    out = tmp_path / "run"
    args = build_parser().parse_args(["evaluate", *voc, *SMALL_FLAGS, "--out", str(out)])
    settings = settings_from_args(args)
    old = dataclasses.replace(
        settings, seed=4, partition=dataclasses.replace(settings.partition, levels=5)
    )
    out.mkdir()
    options = evaluation.RunOptions(out=out)
    (out / evaluation.SETTINGS).write_text(json.dumps(evaluation.recorded_settings(old, options)))
    result_files.write_batch(out, 0, [{"index": 0, "name": "0"}])
    code, _, err = evaluate(capsys, *voc, *SMALL_FLAGS, "--out", str(out), "--resume")
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"hiseg evaluate: error: {out} holds a run with other settings: partition.levels 5 "
        "there, 3 now; seed 4 there, 0 now. Use another --out, or --overwrite to discard it"
    )


def test_resume_with_another_batch_size_or_device_count_is_refused(
    voc, tmp_path, capsys, default_checkpoint
):
    """The batch size and the devices can change a tree (issue 15): settings.json records
    them and --resume compares them like every other setting."""
    out = tmp_path / "run"
    args = build_parser().parse_args(["evaluate", *voc, *SMALL_FLAGS, "--out", str(out)])
    recorded = evaluation.recorded_settings(
        settings_from_args(args), evaluation.RunOptions(out=out, batch_size=4)
    )
    now = recorded["engine"]["devices"]
    assert recorded["engine"]["batch_size"] == 4 and now >= 1
    result_files.write_batch(out, 0, [{"index": 0, "name": "0"}])
    for engine, flags, change in (
        ({"batch_size": 4}, ["--batch-size", "2"], "engine.batch_size 4 there, 2 now"),
        ({"devices": now + 1}, ["--batch-size", "4"], f"engine.devices {now + 1} there, {now} now"),
    ):
        saved = recorded | {"engine": recorded["engine"] | engine}
        (out / evaluation.SETTINGS).write_text(json.dumps(saved))
        code, _, err = evaluate(capsys, *voc, *SMALL_FLAGS, *flags, "--out", str(out), "--resume")
        assert code == 2
        assert f"holds a run with other settings: {change}. Use another" in err


def test_folder_of_an_earlier_version_is_refused_or_overwritten(
    voc, tmp_path, capsys, default_checkpoint
):
    """The appended `results.jsonl` of earlier versions is not read: one line, and
    --overwrite discards it."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.jsonl").write_text('{"index": 0, "name": "0"}\n')
    flags = [*voc, *SMALL_FLAGS, "--batch-size", "2", "--limit", "2", "--out", str(out)]
    code, _, err = evaluate(capsys, *flags)
    assert code == 2 and err.strip() == (
        f"hiseg evaluate: error: {out} holds results.jsonl, results of an earlier hiseg-jax "
        "that this one does not read: use another --out, or --overwrite to discard them"
    )
    code, _, _ = evaluate(capsys, *flags, "--overwrite")
    assert code == 0 and not (out / "results.jsonl").exists()
    assert [r["index"] for r in result_files.read_records(out)] == [0, 1]


def test_interrupt_resume_and_table(voc, tmp_path, capsys, monkeypatch, default_checkpoint):
    out = tmp_path / "run"
    flags = [*voc, *SMALL_FLAGS, "--batch-size", "2", "--out", str(out)]
    real = evaluation.score_batch
    calls = []

    def interrupted_at_second_batch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(evaluation, "score_batch", interrupted_at_second_batch)
    code, _, err = evaluate(capsys, *flags)
    assert code == 130 and "interrupted; 2 images recorded" in err and "--resume" in err
    assert len(result_files.read_records(out)) == 2
    monkeypatch.setattr(evaluation, "score_batch", real)

    code, _, err = evaluate(capsys, *flags)
    assert code == 2 and "--resume" in err and "--overwrite" in err

    code, stdout, _ = evaluate(capsys, *flags, "--resume")
    assert code == 1  # images were skipped
    assert "4 images scored, 2 skipped" in stdout and "skipped 2: unreadable image" in stdout
    assert "skipped 5: ground truth: label values not in hierarchy" in stdout
    lines = stdout.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("| level"))
    header, rule, row = lines[start : start + 3]
    assert [c.strip() for c in header.split("|")[1:-1]] == [
        "level",
        "images",
        "classes",
        "mIoU",
        "pAcc",
        "mAcc",
        "fIoU",
        "NMCovering",
        "NHCovering",
        "nodes",
    ]
    assert set(rule) == {"|", "-"}
    assert [c.strip() for c in row.split("|")[1:3]] == ["all classes", "4"]
    assert [r["index"] for r in result_files.read_records(out)] == [0, 1, 2, 3, 4, 5]
    report = json.loads(out.joinpath("report.json").read_text())
    assert report["command"].startswith("hiseg evaluate --dataset voc2012 --data-dir ")
    assert "--n-parts 16" in report["command"] and "--batch-size 2" in report["command"]
    assert Path(out / "report.md").read_text().count("| all classes |") == 1


@pytest.mark.parametrize(
    ("resolution", "refine", "flags"),
    [
        ("image", GuidedConfig(), []),  # the default
        ("image", CRFConfig(), ["--refine", "crf"]),
        ("image", None, ["--refine", "none"]),
        ("patch", None, []),  # the default at the patch grid
    ],
)
def test_command_line_round_trip(tmp_path, resolution, refine, flags):
    settings = evaluation.EvalSettings(
        dataset="voc2012",
        data_dir=str(tmp_path),
        split="val",
        size=112,
        resolution=resolution,
        partition=SMALL,
        seed=3,
        refine=refine,
    )
    options = evaluation.RunOptions(out=tmp_path / "out", batch_size=2)
    words = shlex.split(command_line(settings, options))
    given = [words[i : i + 2] for i, word in enumerate(words) if word == "--refine"]
    assert given == ([flags] if flags else [])
    args = build_parser().parse_args(words[1:])
    assert settings_from_args(args) == settings
    assert (args.out, args.batch_size) == (options.out, options.batch_size)


def test_command_line_refuses_refinement_settings_without_flags(tmp_path):
    settings = evaluation.EvalSettings(
        dataset="voc2012", data_dir=str(tmp_path), split="val", refine=CRFConfig(n_iter=2)
    )
    with pytest.raises(ValueError, match="--refine guided and --refine crf take the"):
        command_line(settings, evaluation.RunOptions(out=tmp_path))
    settings = dataclasses.replace(settings, refine=GuidedConfig(radius=3))
    with pytest.raises(ValueError, match="GuidedConfig and CRFConfig defaults"):
        command_line(settings, evaluation.RunOptions(out=tmp_path))


@pytest.mark.parametrize(
    ("flags", "refine"),
    [
        ([], GuidedConfig()),
        (["--crf"], CRFConfig()),
        (["--refine", "crf"], CRFConfig()),
        (["--refine", "none"], None),
        (["--resolution", "patch"], None),
    ],
)
def test_refine_flags(flags, refine):
    """The guided filter without a flag (none at the patch grid); --crf is --refine crf."""
    args = build_parser().parse_args(
        ["evaluate", "--dataset", "voc2012", "--data-dir", ".", *flags]
    )
    assert settings_from_args(args).refine == refine


def test_crf_and_refine_exclude_each_other(capsys):
    argv = ["evaluate", "--dataset", "voc2012", "--data-dir", ".", "--crf", "--refine", "guided"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "not allowed with argument" in capsys.readouterr().err
