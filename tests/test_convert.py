import functools
import re

import jax
import numpy as np
import pytest
import torch

import reference
from stmem_jax.model_dir import load_model, save_model
from conftest import PUBLIC_DECODER, perturbed
from stmem_jax.cli import convert as main
from stmem_jax.convert import (layout, load_torch_checkpoint, save_torch_checkpoint, state_dict_from_variables,
                               variables_from_state_dict)
from stmem_jax.models import create_model, init_variables
from test_models import TINY, noise_for


def assert_same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def save_pth(path, state_dict, wrap=True):
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}
    torch.save({"model": tensors, "epoch": 799, "optimizer": {}, "scaler": {}, "config": {"lr": 1.5e-4}}
               if wrap else tensors, path)


def test_vit_base_layout_has_the_public_keys_and_shapes():
    model = create_model("st_mem", "vit_base")
    shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
    state_dict = state_dict_from_variables(model, jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes))
    assert len(state_dict) == 228
    assert state_dict["encoder.to_patch_embedding.2.weight"].shape == (768, 75)
    assert state_dict["encoder.pos_embedding"].shape == (1, 32, 768)
    assert state_dict["encoder.block11.attn.fn.to_qkv.weight"].shape == (3 * 768, 768)
    assert state_dict["encoder.block0.ff.fn.net.3.weight"].shape == (768, 3072)
    assert state_dict["encoder.lead_embeddings.11"].shape == (768,)
    assert state_dict["mask_embedding"].shape == (1, 1, 256)
    assert state_dict["decoder_pos_embed"].shape == (1, 32, 256)
    assert state_dict["decoder_blocks.3.attn.fn.to_out.0.weight"].shape == (256, 256)
    assert state_dict["decoder_head.weight"].shape == (75, 256)
    assert {k for k in state_dict if k.startswith("to_patch_embedding")} == {
        f"to_patch_embedding.{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}


@pytest.mark.slow
def test_pretraining_file_round_trip_is_lossless_and_matches_reference(tmp_path, tiny_stmem, series):
    model, variables = tiny_stmem
    path = tmp_path / "st_mem.pth"
    save_pth(path, state_dict_from_variables(model, variables))
    imported_model, imported = load_torch_checkpoint(path)
    assert imported_model == model
    assert_same_tree(imported, variables)
    noise = noise_for(series)
    loss, _, _ = reference.pretrain_forward(variables["params"], series, noise, TINY)
    np.testing.assert_allclose(imported_model.apply(imported, series, noise=noise)["loss"], loss, rtol=1e-5, atol=1e-5)


def test_encoder_file_imports_as_classification_encoder(tmp_path, tiny_stmem, tiny_classifier, series):
    model, variables = tiny_stmem
    path = tmp_path / "encoder.pth"
    save_pth(path, state_dict_from_variables(model, variables, encoder_only=True), wrap=False)
    encoder, encoder_vars = load_torch_checkpoint(path)
    assert type(encoder).__name__ == "STMEMClassifier" and encoder.num_classes == 0
    np.testing.assert_allclose(encoder_vars["params"]["encoder"]["pos_embedding"], model.fixed_tables()["pos_embedding"])
    expected = reference.classifier_forward(encoder_vars["params"], series, TINY)
    np.testing.assert_allclose(encoder.apply(encoder_vars, series), expected, rtol=1e-5, atol=1e-5)
    # the encoder weights are the pre-trained ones
    assert_same_tree(encoder_vars["params"]["encoder"]["blocks"], variables["params"]["encoder"]["blocks"])

    clf_model, clf_vars = tiny_classifier  # a fine-tuned classifier keeps its head
    state_dict = state_dict_from_variables(clf_model, clf_vars)
    assert state_dict["head.weight"].shape == (4, 128)
    back_model, back = variables_from_state_dict(state_dict)
    assert back_model == clf_model
    assert_same_tree(back, clf_vars)


def test_import_errors_name_the_key(tmp_path, tiny_stmem):
    model, variables = tiny_stmem
    state_dict = state_dict_from_variables(model, variables)

    missing = dict(state_dict)
    del missing["decoder_blocks.1.ff.fn.net.3.bias"]
    with pytest.raises(KeyError, match=r"decoder_blocks\.1\.ff\.fn\.net\.3\.bias"):
        variables_from_state_dict(missing)

    wrong = dict(state_dict, **{"encoder.block2.attn.fn.to_out.0.weight": np.zeros((128, 64), np.float32)})
    with pytest.raises(ValueError, match=r"encoder\.block2\.attn\.fn\.to_out\.0\.weight: shape \(128, 64\)"):
        variables_from_state_dict(wrong)

    extra = dict(state_dict, **{"encoder.head.weight": np.zeros((5, 128), np.float32)})
    with pytest.raises(ValueError, match=r"not part of the ST-MEM layout: encoder\.head\.weight"):
        variables_from_state_dict(extra)
    _, loose = variables_from_state_dict(extra, strict=False)
    assert_same_tree(loose, variables)

    shared = dict(state_dict, **{"to_patch_embedding.2.bias": state_dict["to_patch_embedding.2.bias"] + 1})
    with pytest.raises(ValueError, match="to_patch_embedding.2.bias differs"):
        variables_from_state_dict(shared)

    poisoned = dict(state_dict)
    poisoned["encoder.block1.attn.norm.weight"] = np.array(state_dict["encoder.block1.attn.norm.weight"], np.float32)
    poisoned["encoder.block1.attn.norm.weight"][3] = np.nan
    with pytest.raises(ValueError, match=r"encoder\.block1\.attn\.norm\.weight holds 1 NaN or infinite value"):
        variables_from_state_dict(poisoned)

    table = dict(state_dict, **{"encoder.pos_embedding": state_dict["encoder.pos_embedding"] + 0.5})
    with pytest.raises(ValueError, match="encoder.pos_embedding .* not the fixed sine-cosine table"):
        variables_from_state_dict(table)

    path = tmp_path / "broken.pth"
    save_pth(path, missing)
    with pytest.raises(KeyError, match="broken.pth"):
        load_torch_checkpoint(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth: not a readable PyTorch checkpoint"):
        load_torch_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_torch_checkpoint(tmp_path / "nothing.pth")


@pytest.mark.slow
def test_preset_inferred_from_shapes():
    for preset in ("vit_small", "vit_base"):
        model = create_model("st_mem", preset)
        zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32),
                             jax.eval_shape(lambda: init_variables(model, jax.random.key(0))))
        entries = layout(model)
        state_dict = state_dict_from_variables(model, zeros)
        assert len(state_dict) == len(entries)
        inferred, _ = variables_from_state_dict(state_dict)
        assert inferred == model


def test_saved_model_directory_round_trip(tmp_path, tiny_classifier):
    model, variables = tiny_classifier
    save_model(tmp_path / "m", model, variables, metadata={"note": "x"})
    restored_model, restored = load_model(tmp_path / "m")
    assert restored_model == model
    assert_same_tree(restored, variables)
    with pytest.raises(FileExistsError, match="overwrite"):
        save_model(tmp_path / "m", model, variables)
    save_model(tmp_path / "m", model, jax.tree.map(lambda x: x * 0, variables), overwrite=True)
    assert float(np.abs(np.asarray(load_model(tmp_path / "m")[1]["params"]["head"]["bias"])).max()) == 0
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path)


def test_convert_command_imports_and_exports(tmp_path, tiny_stmem, capsys):
    model, variables = tiny_stmem
    source = tmp_path / "public.pth"
    save_pth(source, state_dict_from_variables(model, variables))
    assert main(["import", str(source), str(tmp_path / "imported")]) == 0
    assert "STMEM (preset custom" in capsys.readouterr().out  # tiny with a wider decoder
    restored_model, restored = load_model(tmp_path / "imported")
    assert restored_model == model
    assert_same_tree(restored, variables)

    assert main(["export", str(tmp_path / "imported"), str(tmp_path / "out.pth")]) == 0
    exported = torch.load(tmp_path / "out.pth", weights_only=True)["model"]
    original = torch.load(source, weights_only=True)["model"]
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)

    assert main(["export", str(tmp_path / "imported"), str(tmp_path / "enc.pth"), "--encoder-only"]) == 0
    encoder = torch.load(tmp_path / "enc.pth", weights_only=True)["model"]
    assert "block0.attn.fn.to_qkv.weight" in encoder and not any(k.startswith("decoder") for k in encoder)

    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "imported"), str(tmp_path / "out.pth")])
    capsys.readouterr()
    # user errors: one line naming the file, exit status 1, nothing written
    (tmp_path / "garbage.pth").write_bytes(b"\x00 not a checkpoint")
    for args, says in [(["import", str(source), str(tmp_path / "imported")], "imported already exists"),
                       (["import", str(tmp_path / "missing.pth"), str(tmp_path / "new")], "missing.pth"),
                       (["import", str(tmp_path / "garbage.pth"), str(tmp_path / "new")],
                        "garbage.pth: not a readable PyTorch checkpoint"),
                       (["export", str(tmp_path / "nowhere"), str(tmp_path / "x.pth")], "nowhere")]:
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.startswith("stmem-convert: error: ") and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "new").exists() and not (tmp_path / "x.pth").exists()


def test_a_model_without_lead_indicators_has_no_public_file():
    model = create_model("st_mem", "tiny", lead_indicators="none")
    with pytest.raises(ValueError, match="public ST-MEM layout has SEP and lead embeddings"):
        state_dict_from_variables(model, init_variables(model, jax.random.key(0)))


# MTAE / MLAE: same functions, the baseline family's entries of the layout


@functools.cache
def tiny_baseline(kind, seed=2, **overrides):
    """A tiny MTAE / MLAE model (or classifier) and perturbed variables, built once per arguments."""
    model = create_model(kind, "tiny", **(PUBLIC_DECODER if not kind.endswith("classifier") else {}), **overrides)
    return model, perturbed(init_variables(model, jax.random.key(seed)), seed=seed)


def zero_variables(model):
    return jax.tree.map(lambda s: np.zeros(s.shape, np.float32),
                        jax.eval_shape(lambda: init_variables(model, jax.random.key(0))))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mtae", "mlae"])
def test_baseline_pretraining_file_round_trip_is_lossless_and_matches_reference(kind, tmp_path, series):
    model, variables = tiny_baseline(kind)
    state_dict = state_dict_from_variables(model, variables)
    tokens, features = (30, 900) if kind == "mtae" else (12, 2250)
    assert state_dict["encoder.to_patch_embedding.2.weight"].shape == (128, features)
    assert state_dict["encoder.pos_embedding"].shape == (1, tokens + 1, 128)
    assert state_dict["decoder_pos_embed"].shape == (1, tokens + 1, 128)
    assert state_dict["encoder.cls_embedding"].shape == (128,)
    assert state_dict["decoder_head.weight"].shape == (features, 128)
    assert not any("lead_embeddings" in k or "sep_embedding" in k for k in state_dict)
    save_pth(tmp_path / f"{kind}.pth", state_dict)
    imported_model, imported = load_torch_checkpoint(tmp_path / f"{kind}.pth")
    assert imported_model == model
    assert_same_tree(imported, variables)
    exported = state_dict_from_variables(imported_model, imported)
    assert exported.keys() == state_dict.keys()
    assert all(np.array_equal(exported[k], state_dict[k]) for k in state_dict)

    noise = np.random.default_rng(4).random(model.noise_shape(series.shape)).astype(np.float32)
    loss, pred, mask = reference.baseline_pretrain_forward(variables["params"], series, noise, TINY, model.token_axis)
    out = imported_model.apply(imported, series, noise=noise)
    np.testing.assert_array_equal(out["mask"], mask)
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["pred"], pred, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["mtae", "mlae"])
def test_baseline_encoder_file_imports_as_classification_encoder(kind, tmp_path, series):
    model, variables = tiny_baseline(kind)
    state_dict = state_dict_from_variables(model, variables, encoder_only=True)
    assert "cls_embedding" in state_dict and not any(k.startswith(("encoder.", "decoder", "head")) for k in state_dict)
    save_pth(tmp_path / "encoder.pth", state_dict, wrap=False)
    encoder, encoder_vars = load_torch_checkpoint(tmp_path / "encoder.pth")
    assert encoder == create_model(f"{kind}_classifier", "tiny")
    assert type(encoder).__name__ == "BaselineClassifier" and encoder.num_classes == 0
    np.testing.assert_array_equal(encoder_vars["params"]["encoder"]["pos_embedding"],
                                  model.fixed_tables()["pos_embedding"])
    pretrained = {k: v for k, v in encoder_vars["params"]["encoder"].items() if k != "pos_embedding"}
    assert_same_tree(pretrained, variables["params"]["encoder"])
    back = state_dict_from_variables(encoder, encoder_vars)
    assert back.keys() == state_dict.keys() and all(np.array_equal(back[k], state_dict[k]) for k in state_dict)
    assert encoder.apply(encoder_vars, series).shape == (2, 128)

    clf_model, clf_vars = tiny_baseline(f"{kind}_classifier", seed=3, num_classes=4)  # a fine-tuned classifier
    clf_state = state_dict_from_variables(clf_model, clf_vars)
    assert clf_state["head.weight"].shape == (4, 128)
    assert clf_state["pos_embedding"].shape == (1, clf_model.num_tokens + 1, 128)
    back_model, back_vars = variables_from_state_dict(clf_state)
    assert back_model == clf_model
    assert_same_tree(back_vars, clf_vars)


@pytest.mark.slow
def test_kind_hint_model_name_and_config_sizes_pick_the_baseline(tmp_path):
    # an MLAE of 750 samples has F = 750 = 10 x 75: by shapes alone it reads as an MTAE of 10 leads
    model, variables = tiny_baseline("mlae", seq_len=750)
    state_dict = state_dict_from_variables(model, variables)
    guessed, _ = variables_from_state_dict(state_dict)
    assert (guessed.token_axis, guessed.num_leads, guessed.patch_size, guessed.seq_len) == ("time", 10, 75, 900)
    assert variables_from_state_dict(state_dict, kind="mlae")[0] == model
    assert variables_from_state_dict(state_dict, config={"model_name": "mlae_vit_base_dec256d4b"})[0] == model
    save_pth(tmp_path / "named.pth", state_dict)
    named = torch.load(tmp_path / "named.pth", weights_only=True)
    named["config"] = {"model_name": "mlae_vit_base_dec256d4b", "model": {"seq_len": 750, "num_leads": 12}}
    torch.save(named, tmp_path / "named.pth")
    assert load_torch_checkpoint(tmp_path / "named.pth")[0] == model
    hinted, _ = variables_from_state_dict(state_dict, kind="mtae", config={"model_name": "mlae_vit_base_dec256d4b"})
    assert hinted == guessed  # the hint wins over the model name
    save_torch_checkpoint(tmp_path / "exported.pth", model, variables)  # exported files say what they hold
    restored_model, restored = load_torch_checkpoint(tmp_path / "exported.pth")
    assert restored_model == model
    assert_same_tree(restored, variables)

    # an MTAE with 50-sample patches: the file's config['model'] gives the sizes
    mtae, mtae_vars = tiny_baseline("mtae", patch_size=50, seq_len=1000)
    mtae_state = state_dict_from_variables(mtae, mtae_vars)
    guessed, _ = variables_from_state_dict(mtae_state)  # by shapes: F = 600 is 75-sample patches of 8 leads
    assert (guessed.patch_size, guessed.num_leads, guessed.seq_len) == (75, 8, 1500)
    config = {"model_name": "mtae_vit_tiny", "model": {"seq_len": 1000, "patch_size": 50, "num_leads": 12}}
    assert variables_from_state_dict(mtae_state, config=config)[0] == mtae

    with pytest.raises(ValueError, match="cls_embedding"):
        variables_from_state_dict(state_dict, kind="st_mem")
    stmem = create_model("st_mem", "tiny", **PUBLIC_DECODER)
    with pytest.raises(ValueError, match="sep_embedding"):
        variables_from_state_dict(state_dict_from_variables(stmem, zero_variables(stmem)), kind="mtae")
    with pytest.raises(ValueError, match="unknown model kind 'mae'"):
        variables_from_state_dict(state_dict, kind="mae")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mtae", "mlae", "mtae_classifier", "mlae_classifier"])
def test_baseline_preset_inferred_from_shapes(kind):
    for preset in ("vit_small", "vit_base"):
        model = create_model(kind, preset)
        state_dict = state_dict_from_variables(model, zero_variables(model))
        assert len(state_dict) == len(layout(model))
        inferred, _ = variables_from_state_dict(state_dict)
        assert inferred == model


def test_baseline_import_errors_name_the_key():
    model, variables = tiny_baseline("mtae")
    state_dict = state_dict_from_variables(model, variables)

    for key in ("decoder_blocks.1.ff.fn.net.3.bias", "encoder.to_patch_embedding.1.weight", "mask_embedding"):
        missing = {k: v for k, v in state_dict.items() if k != key}
        with pytest.raises(KeyError, match=re.escape(key)):
            variables_from_state_dict(missing)
    with pytest.raises(KeyError, match=r"encoder\.cls_embedding"):
        variables_from_state_dict({k: v for k, v in state_dict.items() if k != "encoder.cls_embedding"})

    wrong = dict(state_dict, **{"encoder.block2.attn.fn.to_out.0.weight": np.zeros((128, 64), np.float32)})
    with pytest.raises(ValueError, match=r"encoder\.block2\.attn\.fn\.to_out\.0\.weight: shape \(128, 64\)"):
        variables_from_state_dict(wrong)
    wrong = dict(state_dict, **{"encoder.cls_embedding": np.zeros((1, 1, 128), np.float32)})
    with pytest.raises(ValueError, match=r"encoder\.cls_embedding: shape \(1, 1, 128\)"):
        variables_from_state_dict(wrong)

    extra = dict(state_dict, **{"encoder.lead_embeddings.0": np.zeros(128, np.float32)})
    with pytest.raises(ValueError, match=r"not part of the MTAE/MLAE layout: encoder\.lead_embeddings\.0"):
        variables_from_state_dict(extra)
    _, loose = variables_from_state_dict(extra, strict=False)
    assert_same_tree(loose, variables)

    table = dict(state_dict, **{"decoder_pos_embed": state_dict["decoder_pos_embed"] + 0.5})
    with pytest.raises(ValueError, match="decoder_pos_embed .* not the fixed sine-cosine table"):
        variables_from_state_dict(table)
    shared = dict(state_dict, **{"to_patch_embedding.1.weight": state_dict["to_patch_embedding.1.weight"] + 1})
    with pytest.raises(ValueError, match="to_patch_embedding.1.weight differs"):
        variables_from_state_dict(shared)


def test_convert_command_imports_and_exports_an_mtae_file(tmp_path, capsys):
    model, variables = tiny_baseline("mtae")
    source = tmp_path / "mtae.pth"
    save_pth(source, state_dict_from_variables(model, variables))
    assert main(["import", str(source), str(tmp_path / "imported")]) == 0
    assert "BaselineMAE (preset custom, kind mtae" in capsys.readouterr().out
    restored_model, restored = load_model(tmp_path / "imported")
    assert restored_model == model
    assert_same_tree(restored, variables)

    assert main(["export", str(tmp_path / "imported"), str(tmp_path / "out.pth")]) == 0
    exported = torch.load(tmp_path / "out.pth", weights_only=True)
    original = torch.load(source, weights_only=True)["model"]
    assert exported["model"].keys() == original.keys()
    assert all(torch.equal(exported["model"][k], original[k]) for k in original)
    assert exported["config"]["model_name"] == "mtae"

    assert main(["export", str(tmp_path / "imported"), str(tmp_path / "enc.pth"), "--encoder-only"]) == 0
    assert main(["import", str(tmp_path / "enc.pth"), str(tmp_path / "enc")]) == 0
    assert "BaselineClassifier (preset tiny, kind mtae_classifier" in capsys.readouterr().out
    assert load_model(tmp_path / "enc")[0] == create_model("mtae_classifier", "tiny")

    # --kind forces the reading: the same tensors as an MLAE of 30 leads of 900 samples
    assert main(["import", str(source), str(tmp_path / "forced"), "--kind", "mlae"]) == 0
    forced = load_model(tmp_path / "forced")[0]
    assert (forced.token_axis, forced.num_leads, forced.seq_len) == ("lead", 30, 900)


def test_one_head_as_wide_as_its_block_has_no_output_projection_in_the_public_layout(tmp_path):
    """The public attention drops its output projection when one head is as wide as the block (the
    tiny preset's decoder, 64 wide): such files import with an identity there, exports leave it out,
    and a trained projection there is refused with a reason instead of a file the public code cannot
    load strictly."""
    model = create_model("st_mem", "tiny", width=64, heads=1, mlp_dim=128, depth=1)
    variables = init_variables(model, jax.random.key(0))
    with pytest.raises(ValueError, match=r"encoder/blocks/block_0/attn/out: the public code builds no output proj"):
        state_dict_from_variables(model, variables)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: np.eye(64, dtype=np.float32) if "out" in str(path) and "kernel" in str(path) else
        np.zeros_like(x) if "out" in str(path) and "bias" in str(path) else np.asarray(x), variables["params"])
    state_dict = state_dict_from_variables(model, {"params": params})
    assert not [k for k in state_dict if "to_out" in k]  # as the public model's state dict
    restored_model, restored = variables_from_state_dict(state_dict)
    assert restored_model == model
    assert_same_tree(restored["params"], params)
    # a file written with the projection (before this rule) still imports, as it is
    with_out = dict(state_dict, **{"encoder.block0.attn.fn.to_out.0.weight": np.full((64, 64), 0.5, np.float32),
                                   "encoder.block0.attn.fn.to_out.0.bias": np.ones(64, np.float32)})
    _, loaded = variables_from_state_dict(with_out)
    np.testing.assert_array_equal(loaded["params"]["encoder"]["blocks"]["block_0"]["attn"]["out"]["kernel"], 0.5)
