"""Models: the tiny config, tokenizer, weights loading and the offline error paths."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from utils.errors import UserError
from utils.models.loading import _hf_candidates, cached_weights, fetch_pretrained, load_model
from utils.models.weights import fingerprint

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_builds_and_encodes(tiny):
    params = sum(p.numel() for p in tiny.model.parameters())
    assert 1_000_000 <= params <= 5_000_000
    assert tiny.embed_dim == 64
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        image_features = tiny.model.encode_image(images, normalize=True)
        text_features = tiny.model.encode_text(tiny.tokenizer(["a photo of a cat.", "a dog"]), normalize=True)
    assert image_features.shape == (3, 64) and text_features.shape == (2, 64)
    assert torch.allclose(image_features.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_tokenizer_is_open_clips_own_and_offline(tiny):
    tokens = tiny.tokenizer(["a photo of a cat."])
    assert tokens.shape == (1, 32)  # tiny's context length
    assert torch.equal(tokens, open_clip.tokenize(["a photo of a cat."], context_length=32))


def test_random_init_is_seeded():
    a, b = load_model("tiny", "none", seed=0), load_model("tiny", "none", seed=0)
    c = load_model("tiny", "none", seed=1)
    assert a.fingerprint == b.fingerprint != c.fingerprint


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_ckpt_loads_state_dict(tmp_path, tiny, suffix):
    trained = load_model("tiny", "none", seed=5).model
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in trained.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save({"state_dict": state, "epoch": 3}, path)  # this project's fine-tuning format: tensors + plain values
    loaded = load_model("tiny", "none", ckpt=str(path))
    assert loaded.fingerprint == fingerprint(trained) != tiny.fingerprint
    assert loaded.weights == str(path)


def test_ckpt_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": object()}, path)
    with pytest.raises(UserError, match="never unpickled"):
        load_model("tiny", "none", ckpt=str(path))


def test_ckpt_for_another_architecture(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, path)
    with pytest.raises(UserError, match="does not fit architecture tiny"):
        load_model("tiny", "none", ckpt=str(path))


# Variants of the tiny config that differ in one way each: every mismatch must end in the one clear error.
MISMATCHES = {
    "text_width": {"text_cfg": {"width": 32}},
    "vision_width": {"vision_cfg": {"width": 64}},
    "depth": {"vision_cfg": {"layers": 2}},
    "text_depth": {"text_cfg": {"layers": 3}},
    "embed_dim": {"embed_dim": 32},
    "context_length": {"text_cfg": {"context_length": 16}},
}


@pytest.fixture(scope="module")
def mismatched_configs(tmp_path_factory):
    """The tiny config with one change each, registered with open_clip as tiny_<change>."""
    import json

    from utils.models.loading import CONFIG_DIR

    folder = tmp_path_factory.mktemp("configs")
    base = json.loads((CONFIG_DIR / "tiny.json").read_text())
    for change, update in MISMATCHES.items():
        config = json.loads(json.dumps(base))
        for key, value in update.items():
            config[key] = {**config[key], **value} if isinstance(value, dict) else value
        (folder / f"tiny_{change}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return folder


@pytest.mark.parametrize("change", sorted(MISMATCHES))
def test_checkpoint_of_another_shape_is_one_clear_error(tmp_path, tiny, mismatched_configs, change):
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": tiny.model.state_dict()}, path)
    if change == "context_length":  # open_clip interpolates text positions: loads, as open_clip intends
        assert load_model(f"tiny_{change}", "none", ckpt=str(path)).embed_dim == 64
        return
    with pytest.raises(UserError, match=f"does not fit architecture tiny_{change}"):
        load_model(f"tiny_{change}", "none", ckpt=str(path))


def test_checkpoint_of_another_architecture_on_the_command_line(tmp_path, tiny, capsys):
    """The ViT-B-32 vs tiny case that ended in open_clip's AssertionError: one `error:` line, exit 2."""
    import eval_ood_detection

    path = tmp_path / "final.pt"
    torch.save({"state_dict": tiny.model.state_dict()}, path)
    with pytest.raises(SystemExit) as info:
        argv = ["--in", "digits", "--model", "ViT-B-32", "--pretrained", "none", "--ckpt", str(path)]
        eval_ood_detection.main([*argv, "--cache-dir", str(tmp_path / "c"), "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "does not fit architecture ViT-B-32" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("truncated.pt", "truncated"),
        ("junk.safetensors", b"not a safetensors header" * 4),
        ("text.pt", b"hello"),
        ("list.pt", [1, 2]),
        ("empty.pt", {}),
    ],
)
def test_unreadable_ckpt(tmp_path, name, content):
    path = tmp_path / name
    if content == "truncated":
        torch.save(load_model("tiny", "none").model.state_dict(), path)
        path.write_bytes(path.read_bytes()[:1000])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(UserError, match="cannot be read as a weights file"):
        load_model("tiny", "none", ckpt=str(path))


def test_ckpt_with_default_tag_of_another_architecture(tmp_path):
    """--ckpt with the default --pretrained openai on an architecture without that tag just uses the checkpoint."""
    path = tmp_path / "w.pt"
    torch.save(load_model("tiny", "none", seed=2).model.state_dict(), path)
    assert load_model("tiny", "openai", ckpt=str(path)).fingerprint == load_model("tiny", "none", seed=2).fingerprint


def test_random_init_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("tiny", "none", seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_ckpt_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_model("tiny", "none", ckpt=str(tmp_path / "nope.pt"))


def test_unknown_model_says_how_to_list():
    with pytest.raises(UserError, match="--list-models"):
        load_model("ViT-Q-99", "none")


def test_unknown_tag_lists_known_tags():
    with pytest.raises(UserError, match="openai"):
        load_model("ViT-B-16", "no-such-tag")


def test_offline_weights_error_is_immediate_and_helpful(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        fetch_pretrained("ViT-B-16", "openai", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 10  # a hang guard, not a benchmark
    message = str(info.value)
    assert "--ckpt" in message and "HF_HUB_OFFLINE" in message and str(tmp_path) in message


def test_unreachable_network_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("utils.models.weights.network_reachable", lambda host: False)
    with pytest.raises(UserError, match=r"huggingface\.co cannot be reached"):
        fetch_pretrained("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))


def test_cached_weights_are_found_without_network(tmp_path):
    """A file left by an earlier download (hub cache layout) is used as is."""
    cfg = open_clip.get_pretrained_cfg("ViT-B-16", "openai")
    repo, names = _hf_candidates(cfg["hf_hub"])
    snapshot = tmp_path / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / names[0]).write_bytes(b"weights")
    (tmp_path / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (tmp_path / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("0" * 40)
    assert cached_weights(cfg, str(tmp_path)) == str(snapshot / names[0])


def test_url_weights_cache(tmp_path):
    cfg = {"url": "https://example.org/models/abc/ViT-X.pt"}
    assert cached_weights(cfg, str(tmp_path)) is None
    (tmp_path / "ViT-X.pt").write_bytes(b"x")
    assert cached_weights(cfg, str(tmp_path)) == str(tmp_path / "ViT-X.pt")


def test_offline_cli_exits_cleanly_without_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    cmd = [
        sys.executable,
        "eval_ood_detection.py",
        "--in",
        "digits",
        "--model",
        "ViT-B-16",
        "--pretrained",
        "openai",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out-dir",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: pretrained weights 'ViT-B-16' / 'openai' are not in the local cache")
    assert not (tmp_path / "out" / "results.json").exists()


def test_compile_falls_back_to_eager_with_one_warning(tiny):
    """A compiler failing at the first call: one warning, then eager outputs, bit-identical; a working one is used."""
    import dataclasses

    import pytest as _pytest

    from utils.models.compile import CompiledOrEager, compile_image_tower

    images = torch.randn(2, 3, 32, 32)
    expected = tiny.model.encode_image(images)

    def broken(module):
        def call(*args, **kwargs):
            raise RuntimeError("inductor: no working C++ compiler")

        return call

    bundle = dataclasses.replace(tiny, model=copy.deepcopy(tiny.model))
    compile_image_tower(bundle, compile=broken)
    with _pytest.warns(UserWarning, match="torch.compile of the image tower failed .RuntimeError: inductor"):
        first = bundle.model.encode_image(images)
    assert torch.equal(first, expected) and torch.equal(bundle.model.encode_image(images), expected)
    calls = []
    working = dataclasses.replace(tiny, model=copy.deepcopy(tiny.model))
    compile_image_tower(working, compile=lambda module: lambda *a, **k: calls.append(1) or module(*a, **k))
    assert torch.equal(working.model.encode_image(images), expected) and calls == [1]
    assert isinstance(working.model.visual, CompiledOrEager)


def test_patch_tokens_are_the_last_blocks_value_path(tiny):
    """GL-MCM's local features restated token by token from the last block's weights: W_v, out_proj, the block's
    residual and MLP, ln_post and proj; the global embedding is encode_image's."""
    from utils.models.local_tokens import global_and_patches

    visual = tiny.model.visual
    captured = {}
    hook = visual.transformer.resblocks[-1].register_forward_pre_hook(lambda m, args: captured.update(x=args[0]))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected_global = tiny.model.encode_image(images)
        pooled, patches = global_and_patches(visual, images)
        hook.remove()
        x = captured["x"] if visual.transformer.batch_first else captured["x"].transpose(0, 1)
        last = visual.transformer.resblocks[-1]
        _, _, w_v = last.attn.in_proj_weight.chunk(3)
        _, _, b_v = last.attn.in_proj_bias.chunk(3)
        for b in range(2):
            for t in range(1, x.shape[1]):  # every patch token, the class token left out
                token = x[b, t]
                value = last.attn.out_proj.weight @ (w_v @ last.ln_1(token) + b_v) + last.attn.out_proj.bias
                out = token + value
                out = out + last.mlp(last.ln_2(out))
                expected = visual.ln_post(out) @ visual.proj
                assert torch.allclose(patches[b, t - 1], expected, atol=1e-5)
    assert torch.equal(pooled, expected_global) and patches.shape == (2, 64, 64)


def test_patch_tokens_need_a_clip_vit(tmp_path):
    from utils.models.local_tokens import patch_count

    with pytest.raises(UserError, match="need an open_clip ViT image tower"):
        patch_count(torch.nn.Linear(2, 2))
