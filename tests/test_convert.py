import jax
import numpy as np
import pytest
import torch

import reference
from stmem_jax.checkpoint import load_model, save_model
from stmem_jax.convert import (layout, load_torch_checkpoint, main, state_dict_from_variables,
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
    assert "STMEM (preset tiny" in capsys.readouterr().out
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
    with pytest.raises(FileExistsError):
        main(["import", str(source), str(tmp_path / "imported")])
