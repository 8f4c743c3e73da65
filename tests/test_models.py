"""Models: the tiny config, tokenizer, weights loading and the offline error paths."""

from __future__ import annotations

import copy
import json
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


@pytest.mark.parametrize("layout", ["plain", "scalar_scale", "module_prefix", "fewer_positions"])
def test_weights_read_once_load_as_open_clips_load_checkpoint(tmp_path, layout):
    """load_open_clip_state restates open_clip.load_checkpoint on weights already read: the same model either way,
    for a plain state dict, a 1-d logit scale, DataParallel's prefix and a shorter text positional embedding."""
    from utils.models.loading import load_open_clip_state
    from utils.models.weights import read_state_dict

    state = {k: v.clone() for k, v in load_model("tiny", "none", seed=5).model.state_dict().items()}
    if layout == "scalar_scale":
        state["logit_scale"] = state["logit_scale"].reshape(1)
    if layout == "module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    if layout == "fewer_positions":
        state["positional_embedding"] = state["positional_embedding"][:-4]
    path = str(tmp_path / "w.pt")
    torch.save(state, path)
    theirs, ours = (load_model("tiny", "none", seed=1).model for _ in range(2))
    open_clip.load_checkpoint(theirs, path, strict=True, weights_only=True)
    load_open_clip_state(ours, read_state_dict(path))
    assert fingerprint(ours) == fingerprint(theirs)


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
    with pytest.raises(UserError, match="cannot be read as a weights file") as info:
        load_model("tiny", "none", ckpt=str(path))
    assert not any(word in str(info.value) for word in ("IndexError", "KeyError", "pop from empty list"))


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
    torch.save({}, tmp_path / "final.pt")
    with pytest.raises(UserError, match=r"is a folder; pass the weights file inside it \(it holds final.pt\)"):
        load_model("tiny", "none", ckpt=str(tmp_path))


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


# open_clip's folder schemas: `local-dir:FOLDER` and `hf-hub:org/repo` (from the hub cache), built from tiny's config.
FOLDER_PREPROCESS = {"mean": [0.5, 0.25, 0.125], "std": [0.2, 0.3, 0.4], "interpolation": "bilinear"}


def write_open_clip_folder(folder: Path, weights: dict | None) -> Path:
    """What an open_clip repo on Hugging Face holds: open_clip_config.json (tiny's config) and, if given, weights."""
    from utils.models.loading import CONFIG_DIR

    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = json.loads((CONFIG_DIR / "tiny.json").read_text())
    config = {"model_cfg": model_cfg, "preprocess_cfg": FOLDER_PREPROCESS}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    if weights is not None:
        torch.save(weights, folder / "open_clip_pytorch_model.bin")
    return folder


def write_hub_cache(cache: Path, repo: str, weights: dict | None) -> Path:
    """The layout huggingface_hub leaves after a download: models--org--repo/{snapshots/<rev>/, refs/main}."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    write_open_clip_folder(root / "snapshots" / revision, weights)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    return root / "snapshots" / revision


@pytest.fixture(scope="module")
def tiny_seed0():
    return load_model("tiny", "none", seed=0)


def _same_model(a, b) -> None:
    images, tokens = torch.randn(2, 3, 32, 32), a.tokenizer(["a photo of a cat.", "a dog"])
    assert torch.equal(tokens, b.tokenizer(["a photo of a cat.", "a dog"]))
    with torch.no_grad():
        assert torch.equal(a.model.encode_image(images), b.model.encode_image(images))
        assert torch.equal(a.model.encode_text(tokens), b.model.encode_text(tokens))
    assert a.fingerprint == b.fingerprint and a.embed_dim == b.embed_dim == 64


def _normalize_and_resize(preprocess):
    from torchvision import transforms

    steps = preprocess.transforms
    norm = next(s for s in steps if isinstance(s, transforms.Normalize))
    resize = next(s for s in steps if isinstance(s, transforms.Resize))
    return list(norm.mean), list(norm.std), resize.interpolation.value


def test_local_dir_loads_the_folders_model_and_preprocessing(tmp_path, tiny_seed0):
    from utils.models.loading import check_model_name, has_patch_tokens, model_config

    folder = write_open_clip_folder(tmp_path / "clip", tiny_seed0.model.state_dict())
    name = f"local-dir:{folder}"
    check_model_name(name)
    loaded = load_model(name, "openai", seed=7)  # the default tag: the folder's weights, not a random init
    _same_model(loaded, tiny_seed0)
    assert loaded.weights == str(folder / "open_clip_pytorch_model.bin") and loaded.name == name
    mean, std, interpolation = _normalize_and_resize(loaded.preprocess)
    assert (mean, std, interpolation) == (FOLDER_PREPROCESS["mean"], FOLDER_PREPROCESS["std"], "bilinear")
    assert _normalize_and_resize(tiny_seed0.preprocess)[0] != mean  # tiny's own is OpenAI's
    assert has_patch_tokens(name) and model_config(name)["embed_dim"] == 64


def test_local_dir_weights_ckpt_and_random_init(tmp_path, tiny_seed0):
    folder = write_open_clip_folder(tmp_path / "clip", tiny_seed0.model.state_dict())
    other = load_model("tiny", "none", seed=5)
    ckpt = tmp_path / "other.pt"
    torch.save(other.model.state_dict(), ckpt)
    with_ckpt = load_model(f"local-dir:{folder}", "openai", ckpt=str(ckpt))
    assert with_ckpt.fingerprint == other.fingerprint and with_ckpt.weights == str(ckpt)
    random = load_model(f"local-dir:{folder}", "none", seed=5)  # --pretrained none: seeded init, as for built-ins
    assert random.weights == "random" and random.fingerprint == other.fingerprint
    empty = write_open_clip_folder(tmp_path / "no_weights", None)
    with pytest.raises(UserError, match=r"holds no weights.*--ckpt FILE, or --pretrained none"):
        load_model(f"local-dir:{empty}", "openai")
    assert load_model(f"local-dir:{empty}", "none").weights == "random"
    bad = tmp_path / "bad.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, bad)
    with pytest.raises(UserError, match="does not fit architecture local-dir:"):
        load_model(f"local-dir:{folder}", "openai", ckpt=str(bad))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("local-dir:{tmp}/missing", "no folder"),
        ("local-dir:{tmp}", "has no open_clip_config.json"),
        ("hf-hub:", "Empty identifier"),
        ("hf-hub:a/b/c", "is not a Hugging Face repo id"),
    ],
)
def test_folder_names_are_checked_without_the_network(tmp_path, monkeypatch, name, expected):
    from utils.models.loading import check_model_name

    monkeypatch.setattr("utils.models.weights.network_reachable", lambda host: pytest.fail("network asked"))
    with pytest.raises(UserError, match=expected):
        check_model_name(name.format(tmp=tmp_path))
    check_model_name("hf-hub:org/never-downloaded")  # a repo id: accepted, whatever the cache holds


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "unreachable"])
def test_hf_hub_not_cached_offline_is_one_clear_error(tmp_path, monkeypatch, offline):
    from utils.models.loading import has_patch_tokens, model_config

    if offline == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr("utils.models.weights.network_reachable", lambda host: False)
    start = time.monotonic()
    with pytest.raises(UserError) as info:
        load_model("hf-hub:org/never-downloaded", "openai", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 10  # a hang guard, not a benchmark
    message = str(info.value)
    for part in ("hf-hub:org/never-downloaded", "huggingface.co", str(tmp_path), "network", "--model local-dir:"):
        assert part in message
    assert model_config("hf-hub:org/never-downloaded", str(tmp_path)) is None
    assert has_patch_tokens("hf-hub:org/never-downloaded", str(tmp_path))  # unknown yet: checked once loaded


def test_hf_hub_loads_offline_from_the_hub_cache(tmp_path, monkeypatch, tiny_seed0):
    from utils.models.loading import has_patch_tokens, model_config

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("utils.models.weights.network_reachable", lambda host: pytest.fail("network asked"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))  # the default cache
    snapshot = write_hub_cache(tmp_path / "hub", "org/repo", tiny_seed0.model.state_dict())
    loaded = load_model("hf-hub:org/repo", "openai", seed=7)
    _same_model(loaded, tiny_seed0)
    assert loaded.weights == str(snapshot / "open_clip_pytorch_model.bin")
    assert _normalize_and_resize(loaded.preprocess)[:2] == (FOLDER_PREPROCESS["mean"], FOLDER_PREPROCESS["std"])
    assert model_config("hf-hub:org/repo")["embed_dim"] == 64 and has_patch_tokens("hf-hub:org/repo")
    other = load_model("tiny", "none", seed=5)
    ckpt = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.model.state_dict().items()}, ckpt)
    with_ckpt = load_model("hf-hub:org/repo", "openai", ckpt=str(ckpt), cache_dir=str(tmp_path / "hub"))
    assert with_ckpt.fingerprint == other.fingerprint != loaded.fingerprint and with_ckpt.weights == str(ckpt)


def test_hf_hub_cached_config_without_weights_offline(tmp_path, monkeypatch):
    """The config alone is cached: --pretrained none builds it; its weights need the hub, or --ckpt."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_hub_cache(tmp_path, "org/repo", None)
    assert load_model("hf-hub:org/repo", "none", cache_dir=str(tmp_path)).weights == "random"
    with pytest.raises(UserError, match=r"not in the local cache.*--ckpt PATH"):
        load_model("hf-hub:org/repo", "openai", cache_dir=str(tmp_path))


def test_eval_ood_detection_with_a_local_dir_model(tmp_path, tiny_seed0):
    import eval_ood_detection

    folder = write_open_clip_folder(tmp_path / "clip", tiny_seed0.model.state_dict())
    argv = ["--in", "digits", "--model", f"local-dir:{folder}", "--score", "mcm", "--workers", "0", "--limit", "40",
            "--no-plots", "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "out")]  # fmt: skip
    summary = eval_ood_detection.main(argv)
    assert 0 <= summary["metrics"]["mcm"]["digits_ood"]["AUROC"] <= 1
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["model_weights"] == str(folder / "open_clip_pytorch_model.bin")


def test_model_logits_add_a_siglip_bias_and_keep_its_scale(tiny):
    """CLIP: min(exp(t), 100) · cos; a SigLIP-family model (a logit_bias): exp(t') · cos + b, never capped at 100."""
    import math

    from utils.models.logits import logit_scale, model_logits, zero_shot_logit_scale

    model = copy.deepcopy(tiny.model)
    image = torch.nn.functional.normalize(torch.randn(3, 64), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 64), dim=-1)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(200.0))
    assert torch.allclose(model_logits(model, image, text), 100.0 * image @ text.T)  # CLIP: capped
    assert zero_shot_logit_scale(model) == 100.0
    model.logit_bias = torch.nn.Parameter(torch.tensor(-10.0))
    assert torch.allclose(model_logits(model, image, text), 200.0 * image @ text.T - 10.0, atol=1e-4)
    assert logit_scale(model).item() == pytest.approx(200.0) and zero_shot_logit_scale(model) == pytest.approx(200.0)
    patches = torch.nn.functional.normalize(torch.randn(2, 5, 64), dim=-1)  # LoCoOp's local logits [B, P, C]
    assert torch.allclose(model_logits(model, patches, text), 200.0 * patches @ text.T - 10.0, atol=1e-4)
