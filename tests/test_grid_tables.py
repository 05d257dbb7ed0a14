"""The paper's layouts of a grid's results (``stmem_jax.grid.paper_tables``) on rows built by hand as
``run_grid`` returns them: row order and name matching, mean ± std, the paper's column and its gap,
missing cells. No training."""

import pytest

from stmem_jax import grid, paper_results


def run(method, mode, auroc, *, init="runs/x", task="st_mem", leads="12", fraction=1.0, seed=0, f1=0.5):
    return dict(task=task, method=method, init=init, mode=mode, fraction=fraction, label_fraction=fraction,
                leads=leads, seed=seed, auroc=auroc, f1=f1)


def table_rows(text, title, section):
    """{first cells: [other cells]} of one row group of one layout of ``text``."""
    block = text.split(f"### {title}")[1].split("### ")[0]
    group = block.split(f"**{section}**")[1].split("**")[0]
    lines = [line for line in group.splitlines() if line.startswith("| ") and not line.startswith("| Method")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.mark.parametrize("name, row", [("ST-MEM", "ST-MEM"), ("st_mem", "ST-MEM"), ("MTAE + RLM", "MTAE+RLM"),
                                       ("mtae_rlm", "MTAE+RLM"), ("moco-v3", "MoCo v3"),
                                       ("CPC 100Hz", "CPC (100 Hz)"), ("ST-MEM w/o lead indicators",
                                                                       "ST-MEM w/o lead indicators"),
                                       ("MTAE", "MTAE"), ("mine", None)])
def test_names_match_the_papers_rows_whatever_their_case_spaces_and_hyphens(name, row):
    assert paper_results.match_row(name) == row


def test_table_1_orders_rows_as_the_paper_and_other_methods_after_in_grid_order():
    names = ["mine", "ST-MEM", "mlae", "Random", "MoCo v3", "other"]
    rows = [run(n, m, 0.8, init="random:st_mem" if n == "Random" else "runs/x")
            for m in ("finetune", "linprobe") for n in names] + [run("Supervised", "scratch", 0.7)]
    text = grid.paper_tables(rows, (0,))
    finetune = [r[0] for r in table_rows(text, "Table 1 layout: test macro AUROC", "Fine-tune")]
    assert finetune == ["Supervised", "Random", "MoCo v3", "mlae", "ST-MEM", "mine", "other"]
    linprobe = [r[0] for r in table_rows(text, "Table 1 layout: test macro AUROC", "Linear probe")]
    assert linprobe == ["Random", "MoCo v3", "mlae", "ST-MEM", "mine", "other"]  # scratch is fine-tune's row
    assert "Lead robustness" not in text  # one lead setting


def test_cells_are_mean_and_sample_std_over_seeds_per_task_and_fraction_with_a_dash_where_missing():
    rows = [run("ST-MEM", "finetune", a, seed=s, f1=f, fraction=fr, task=t)
            for t, fr, s, a, f in [("st_mem", 0.01, 0, 0.80, 0.4), ("st_mem", 0.01, 1, 0.90, 0.6),
                                   ("st_mem", 1.0, 0, 0.95, 0.7), ("cpsc2018_single", 1.0, 0, 0.70, 0.3),
                                   ("cpsc2018_single", 1.0, 1, 0.72, 0.3)]]
    text = grid.paper_tables(rows, (0, 1))
    assert "| Method | st_mem 1% | st_mem 100% | cpsc2018_single 100% |" in text
    (auroc,) = table_rows(text, "Table 1 layout: test macro AUROC", "Fine-tune")
    assert auroc == ["ST-MEM", "0.850 ± 0.071", "0.950 ± 0.000 (n=1)", "0.710 ± 0.014"]
    (f1,) = table_rows(text, "Table 1 layout: test macro F1", "Fine-tune")
    assert f1 == ["ST-MEM", "0.500 ± 0.141", "0.700 ± 0.000 (n=1)", "0.300 ± 0.000"]
    assert "Linear probe" not in text  # no linear probe runs: no such row group
    missing = grid.paper_tables(rows + [run("MLAE", "finetune", 0.9, fraction=0.01)], (0, 1))
    mlae = [r for r in table_rows(missing, "Table 1 layout: test macro AUROC", "Fine-tune") if r[0] == "MLAE"]
    assert mlae == [["MLAE", "0.900 ± 0.000 (n=1)", "-", "-"]]


def test_the_paper_reference_shows_its_number_and_our_gap_and_na_without_a_public_number():
    rows = [run("st-mem", "finetune", 0.91, seed=0), run("st-mem", "finetune", 0.914, seed=1),
            run("ST-MEM", "linprobe", 0.85), run("mine", "linprobe", 0.6),
            run("ST-MEM", "finetune", 0.8, fraction=0.01)]
    text = grid.paper_tables(rows, (0, 1), reference="paper")
    cells = {r[0]: r[1:] for r in table_rows(text, "Table 1 layout: test macro AUROC", "Fine-tune")}
    assert cells["st-mem"] == ["- (paper 0.815)", "0.912 ± 0.003 (paper 0.933, -0.021)"]  # PTB-XL 1%, 100%
    assert cells["ST-MEM"] == ["0.800 ± 0.000 (n=1) (paper 0.815, -0.015)", "- (paper 0.933)"]
    probe = {r[0]: r[1:] for r in table_rows(text, "Table 1 layout: test macro AUROC", "Linear probe")}
    assert probe["ST-MEM"] == ["- (paper n/a)", "0.850 ± 0.000 (n=1) (paper 0.838, +0.012)"]  # 100% only
    assert probe["mine"][1] == "0.600 ± 0.000 (n=1) (paper n/a)"
    assert "st_mem = PTB-XL" in text and "arXiv 2402.09450" in text
    assert "(paper" not in grid.paper_tables(rows, (0, 1))
    other_task = grid.paper_tables([run("ST-MEM", "finetune", 0.9, task="rhythm")], (0,), reference="paper")
    assert "0.900 ± 0.000 (paper n/a)" in other_task  # a task that is none of the paper's datasets
    with pytest.raises(ValueError, match="grid.reference"):
        grid.paper_tables(rows, (0,), reference="papers")


def test_the_lead_robustness_layout_has_rows_method_by_lead_setting_when_the_grid_has_several():
    rows = [run(n, m, a, leads=le) for n, a in (("MLAE", 0.8), ("ST-MEM", 0.9)) for m in ("finetune", "linprobe")
            for le in ("12", "limb", "1")] + [run("Supervised", "scratch", 0.7)]
    text = grid.paper_tables(rows, (0,), reference="paper")
    finetune = table_rows(text, "Lead robustness: test macro AUROC", "Fine-tune")
    assert [r[:2] for r in finetune][:2] == [["Supervised", "12-lead"], ["MLAE", "12-lead"]]  # only its settings
    table_1 = table_rows(text, "Table 1 layout: test macro AUROC, 12-lead", "Fine-tune")
    assert [r[0] for r in table_1] == ["Supervised", "MLAE", "ST-MEM"]  # 12 leads only
    leads = table_rows(text, "Lead robustness: test macro AUROC", "Linear probe")
    assert [r[:2] for r in leads] == [["MLAE", "12-lead"], ["MLAE", "6-lead (limb)"], ["MLAE", "1-lead (I)"],
                                      ["ST-MEM", "12-lead"], ["ST-MEM", "6-lead (limb)"], ["ST-MEM", "1-lead (I)"]]
    assert leads[3][2] == "0.900 ± 0.000 (paper 0.838, +0.062)" and leads[4][2] == "0.900 ± 0.000 (paper n/a)"
    assert "### Lead robustness: test macro F1" in text
    limb_only = grid.paper_tables([run("ST-MEM", "finetune", 0.9, leads="limb")], (0,))
    assert "Table 1 layout: test macro AUROC, 6-lead (limb)" in limb_only and "Lead robustness" not in limb_only


# the paper's tables as the authors' README prints them (the project's spec, paper_tables.md); our row labels
# for its CPC rows; our tasks for its datasets, our lead settings for its lead counts
PAPER_TABLE_1 = """
| Supervised | 0.676 ± 0.011 | 0.736 ± 0.020 | 0.905 ± 0.004 | 0.600 ± 0.095 | 0.609 ± 0.111 | 0.958 ± 0.002 |
| MoCo v3 | 0.797 ± 0.006 | 0.826 ± 0.015 | 0.913 ± 0.002 | 0.791 ± 0.045 | 0.903 ± 0.019 | 0.967 ± 0.003 |
| CMSC | 0.648 ± 0.064 | 0.773 ± 0.023 | 0.877 ± 0.003 | 0.625 ± 0.013 | 0.732 ± 0.038 | 0.938 ± 0.006 |
| MTAE | 0.707 ± 0.024 | 0.713 ± 0.001 | 0.910 ± 0.001 | 0.670 ± 0.032 | 0.756 ± 0.013 | 0.961 ± 0.001 |
| MTAE+RLM | 0.730 ± 0.030 | 0.730 ± 0.003 | 0.911 ± 0.004 | 0.708 ± 0.020 | 0.726 ± 0.011 | 0.960 ± 0.002 |
| MLAE | 0.793 ± 0.007 | 0.838 ± 0.018 | 0.915 ± 0.001 | 0.860 ± 0.013 | 0.922 ± 0.007 | 0.973 ± 0.002 |
| (250 Hz) CPC† | 0.740 ± 0.057 | 0.838 ± 0.024 | 0.933 ± 0.001 | 0.754 ± 0.015 | 0.898 ± 0.026 | 0.974 ± 0.002 |
| (100 Hz) CPC† | 0.773 ± 0.014 | 0.842 ± 0.043 | 0.934 ± 0.002 | 0.762 ± 0.058 | 0.917 ± 0.016 | 0.973 ± 0.003 |
| ST-MEM | 0.815 ± 0.012 | 0.878 ± 0.011 | 0.933 ± 0.003 | 0.897 ± 0.025 | 0.952 ± 0.004 | 0.980 ± 0.001 |
"""
PAPER_LEAD_TABLE = """
| MTAE+RLM | 0.911 ± 0.004 | 0.888 ± 0.002 | 0.795 ± 0.003 | 0.960 ± 0.002 | 0.931 ± 0.017 | 0.909 ± 0.006 | 0.857 ± 0.005 |
| MLAE | 0.915 ± 0.001 | 0.890 ± 0.001 | 0.797 ± 0.001 | 0.973 ± 0.002 | 0.959 ± 0.002 | 0.925 ± 0.001 | 0.861 ± 0.003 |
| ST-MEM | 0.933 ± 0.003 | 0.903 ± 0.007 | 0.804 ± 0.005 | 0.980 ± 0.001 | 0.973 ± 0.002 | 0.937 ± 0.006 | 0.866 ± 0.003 |
"""
PAPER_LABELS = {"(250 Hz) CPC†": "CPC (250 Hz)", "(100 Hz) CPC†": "CPC (100 Hz)"}
TABLE_1_COLUMNS = [(task, fraction) for task in ("st_mem", "cpsc2018_single") for fraction in (0.01, 0.05, 1.0)]
LEAD_COLUMNS = [("st_mem", "12"), ("st_mem", "limb"), ("st_mem", "1"), ("cpsc2018_single", "12"),
                ("cpsc2018_single", "limb"), ("cpsc2018_single", "1"), ("af2017", "1")]


def paper_table(text):
    """{our row label: [(mean, std) per column]} of a Markdown table of the paper's."""
    out = {}
    for line in text.strip().splitlines():
        label, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        out[PAPER_LABELS.get(label, label)] = [tuple(float(v) for v in cell.split(" ± ")) for cell in cells]
    return out


def test_reference_paper_fills_every_cell_of_the_papers_table_1_with_its_number():
    paper = paper_table(PAPER_TABLE_1)
    rows = [run(name, "scratch" if name == "Supervised" else "finetune", 0.5, task=task, fraction=fraction)
            for name in paper for task, fraction in TABLE_1_COLUMNS]
    text = grid.paper_tables(rows, (0,), reference="paper")
    assert "| Method | st_mem 1% | st_mem 5% | st_mem 100% | cpsc2018_single 1% | cpsc2018_single 5% |" in text
    cells = {r[0]: r[1:] for r in table_rows(text, "Table 1 layout: test macro AUROC", "Fine-tune")}
    assert list(cells) == list(paper)  # the paper's row order
    for name, values in paper.items():
        assert cells[name] == [f"0.500 ± 0.000 (paper {mean:.3f}, {0.5 - mean:+.3f})" for mean, _ in values], name
        for (task, fraction), (mean, std) in zip(TABLE_1_COLUMNS, values):
            mode = "scratch" if name == "Supervised" else "finetune"
            value = paper_results.lookup(paper_results.match_row(name), task, mode, fraction, "12", "auroc")
            assert (value.mean, value.std) == (mean, std) and "bakqui/ST-MEM" in value.source


def test_reference_paper_fills_every_cell_of_the_papers_lead_table_with_its_number():
    paper = paper_table(PAPER_LEAD_TABLE)
    rows = [run(name, "finetune", 0.5, task=task, leads=leads) for name in paper for task, leads in LEAD_COLUMNS]
    text = grid.paper_tables(rows, (0,), reference="paper")
    lines = table_rows(text, "Lead robustness: test macro AUROC", "Fine-tune")
    cells = {(r[0], r[1]): r[2:] for r in lines}  # (method, lead setting): st_mem, cpsc2018_single, af2017 at 100%
    for name, values in paper.items():
        for (task, leads), (mean, std) in zip(LEAD_COLUMNS, values):
            column = ["st_mem", "cpsc2018_single", "af2017"].index(task)
            cell = cells[(name, grid.LEAD_SETTING_NAMES[leads])][column]
            assert cell == f"0.500 ± 0.000 (paper {mean:.3f}, {0.5 - mean:+.3f})", (name, task, leads)
            value = paper_results.lookup(name, task, "finetune", 1.0, leads, "auroc")
            assert (value.mean, value.std) == (mean, std) and "bakqui/ST-MEM" in value.source
        assert cells[(name, "12-lead")][2] == "- (paper n/a)"  # PhysioNet 2017 has one lead only
    # its 12-lead columns are Table 1's 100% ones
    table_1 = paper_table(PAPER_TABLE_1)
    assert all(table_1[name][2] == values[0] and table_1[name][5] == values[3] for name, values in paper.items())


def test_every_paper_number_names_its_source_and_a_row_of_the_paper():
    assert paper_results.RESULTS
    for (row, dataset, mode, fraction, leads, metric), value in paper_results.RESULTS.items():
        assert row in paper_results.ROWS and dataset in paper_results.TASK_DATASETS.values()
        assert mode in ("finetune", "linprobe", "scratch") and 0 < fraction <= 1 and metric in ("auroc", "f1")
        assert value.source and 0 < value.mean < 1


def test_a_task_of_the_grid_may_have_its_own_prepared_folder():
    from stmem_jax.train.config import load_config

    config = load_config("grid:ptbxl:st_mem")
    config.run.data.dir = "/data/ptbxl"
    config.grid.update(tasks=("st_mem", "cpsc2018_single=/data/cpsc"), methods=("ST-MEM=runs/x",), modes=("linprobe",),
                       fractions=(1.0,), leads=("12",), seeds=(0, 1, 2))
    dirs = {run.task: grid.run_config(config, run).data.dir for run in grid.grid_runs(config)}
    assert dirs == {"st_mem": "/data/ptbxl", "cpsc2018_single": "/data/cpsc"}
