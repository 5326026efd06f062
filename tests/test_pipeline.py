"""The pipeline runner: skip finished stages, force, stop on a failing stage with its name, keep outputs."""

import json
import textwrap

import pytest

from r1lab.pipeline import load_pipeline, main

WRITE = "import json, sys; open(sys.argv[1] + '/done.json', 'w').write(json.dumps({'ok': 1}))"


def _spec(tmp_path, fail_b: bool) -> str:
    b = "import sys; print('boom: bad input in stage b'); sys.exit(3)" if fail_b else WRITE
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(f"""
        name: micro
        stages:
          - name: a
            run: ["{{python}}", "-c", "{WRITE}", "{{out}}"]
          - name: b
            run: ["{{python}}", "-c", "{b}", "{{out}}"]
    """))
    return str(path)


def test_failing_stage_stops_with_its_name_and_keeps_earlier_outputs(tmp_path, capsys):
    spec = _spec(tmp_path, fail_b=True)
    assert main(["--pipeline", spec, "--root", str(tmp_path), "--no-report"]) == 1
    err = capsys.readouterr().err
    assert "stage 'b' failed (exit code 3)" in err and "boom: bad input in stage b" in err
    root = tmp_path / "pipeline" / "micro"
    assert json.loads((root / "a" / "done.json").read_text()) == {"ok": 1}
    assert json.loads((root / "a" / "stage.json").read_text())["seconds"] >= 0
    # fixed: the rerun skips a and completes b
    spec = _spec(tmp_path, fail_b=False)
    assert main(["--pipeline", spec, "--root", str(tmp_path), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "a: output exists" in out and "b: done" in out


def test_rerunning_one_stage_moves_the_old_output_aside(tmp_path, capsys):
    spec = _spec(tmp_path, fail_b=False)
    assert main(["--pipeline", spec, "--root", str(tmp_path), "--no-report"]) == 0
    assert main(["--pipeline", spec, "--root", str(tmp_path), "--stage", "a"]) == 0
    root = tmp_path / "pipeline" / "micro"
    assert len(list(root.glob("a.old-*"))) == 1 and (root / "a" / "done.json").is_file()
    with pytest.raises(SystemExit):
        main(["--pipeline", spec, "--root", str(tmp_path), "--stage", "nope"])
    assert "no stage 'nope'" in capsys.readouterr().err


def test_bad_pipeline_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no pipeline 'missing'"):
        load_pipeline("missing")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - name: x\n")
    with pytest.raises(ValueError, match=r"bad.yaml: stages\[0\] needs a name and exactly one of train/run"):
        load_pipeline(str(bad))
    assert [s.name for s in load_pipeline("tiny")["stages"]][:3] == ["base", "r1_zero", "sft"]
