import os

from stmem_jax.demo import run_demo

SMALL = dict(width=64, depth=2, heads=1, mlp_dim=128, decoder_width=64, decoder_depth=1, decoder_heads=1)


def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    summary = run_demo(str(tmp_path), records=240, pretrain_steps=10, downstream_epochs=2, fraction=0.05,
                       tiny_model=SMALL)
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
    assert "[3/3]" in out and "[2/2]" in out
    again = run_demo(str(tmp_path), records=240, pretrain_steps=10, downstream_epochs=2, fraction=0.05,
                     tiny_model=SMALL)
    assert again["table"] == table
    assert "[1/" not in capsys.readouterr().out  # the grids resumed: no run again
