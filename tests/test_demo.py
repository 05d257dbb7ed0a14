import pytest
import os

from stmem_jax.demo import SHIPPED, run_demo


@pytest.mark.slow
def test_demo_runs_end_to_end_with_the_shipped_encoder_and_resumes(tmp_path, capsys):
    small = dict(records=240, pretrain_steps=10, downstream_epochs=2, fraction=0.05, seeds=(0,))
    summary = run_demo(str(tmp_path), **small)
    assert summary["encoder"] == SHIPPED
    table = summary["table"]
    for row in ("ST-MEM (fine-tune) | 12-lead", "ST-MEM (fine-tune) | 6-lead (limb)", "ST-MEM (fine-tune) | 1-lead (I)",
                "ST-MEM (linear probe) | 12-lead", "Supervised (scratch) | 12-lead"):
        assert row in table
    assert "5% AUROC" in table
    on_disk = open(os.path.join(tmp_path, "downstream", "results.md")).read()  # both grids, not the last only
    assert on_disk == table
    assert len(open(os.path.join(tmp_path, "downstream", "runs.csv")).read().splitlines()) == 1 + 5
    for path in summary["figures"].values():
        assert os.path.getsize(path) > 10_000  # a real PNG
    out = capsys.readouterr().out
    assert "[2/2]" in out and "[1/1]" in out
    printed = [line for line in out.splitlines() if line.startswith("| ST-MEM") or line.startswith("| Supervised")]
    assert len(printed) == 5 and all(line in on_disk.splitlines() for line in printed)
    runs = open(os.path.join(tmp_path, "downstream", "runs.csv")).read()
    names = {"fine-tune": "finetune", "linear probe": "linprobe", "scratch": "scratch"}
    leads = {"12-lead": "12", "6-lead (limb)": "limb", "1-lead (I)": "1"}
    for line in printed:  # each printed row is a run in runs.csv: method,mode,leads,fraction
        method, lead_setting = (cell.strip() for cell in line.strip("|").split("|")[:2])
        name, mode = method[:-1].split(" (")
        assert f",{name},{names[mode]},{leads[lead_setting]},0.05," in runs
    assert "ST-MEM fine-tuning is" in out and "scratch at 5% of the labels, one seed" in summary["verdict"]
    assert "pre-trained for 6,000 steps" in out  # the shipped encoder is labelled as such
    assert "the authors recipe" in out and summary["recipe"] == "authors"  # the recipe it runs, named
    assert set(summary["seconds"]) == {"data", "fresh pre-training", "downstream", "figures"}
    again = run_demo(str(tmp_path), **small)
    assert again["table"] == table
    assert "[1/" not in capsys.readouterr().out  # the grids resumed: no run again
